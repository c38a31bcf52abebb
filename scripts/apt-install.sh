# Sourced by the install scripts: apt_install PACKAGE... installs Debian packages as root, or says how.
# Returns 1 (after saying what to run) when not root.
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: $*" >&2
    echo "install them with: sudo apt-get update && sudo apt-get install -y $*" >&2
    return 1
  fi
  echo "installing system packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "$@"
}
