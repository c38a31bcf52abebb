# The primary: PostgreSQL with pgfanout's C capture trigger installed in its library directory, so that
# `agent install` uses it (capture_trigger: c in docker/pgfanout.yaml) instead of the PL/pgSQL fallback.
# Built in a stage of its own: the server headers and the compiler stay out of the running image.
ARG POSTGRES_IMAGE=postgres:15
FROM ${POSTGRES_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-server-dev-${PG_MAJOR}" gcc make libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY agent/capture_c /build/capture_c
# with_llvm=no: no JIT bitcode, so no clang needed
RUN make -C /build/capture_c with_llvm=no && make -C /build/capture_c with_llvm=no install

FROM ${POSTGRES_IMAGE}
COPY --from=build /usr/lib/postgresql/${PG_MAJOR}/lib/pgfanout_capture.so /usr/lib/postgresql/${PG_MAJOR}/lib/
