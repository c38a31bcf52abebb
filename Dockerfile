# The pgfanout image: one image, every daemon (the command picks agent, distributor or subscriber).
FROM python:3.11-slim
WORKDIR /opt/pgfanout
COPY pyproject.toml README.md ./
COPY pgfanout ./pgfanout
COPY agent ./agent
COPY distributor ./distributor
COPY subscriber ./subscriber
COPY schemas ./schemas
RUN pip install --no-cache-dir -e . && useradd --system --no-create-home pgfanout
USER pgfanout
ENTRYPOINT ["pgfanout"]
CMD ["--help"]
