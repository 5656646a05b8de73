# One image for the Python services (ingest, alerts, api, simulate).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY ingest ./ingest
COPY api ./api
COPY alerts ./alerts
COPY simulators ./simulators
COPY dashboards ./dashboards
COPY nakhon ./nakhon
COPY harness ./harness
# MicroPython sources for firmware in the loop and `nakhon firmware build`
COPY firmware ./firmware
RUN pip install --no-cache-dir . && useradd --system --home /data nakhon && mkdir -p /data && chown nakhon /data
USER nakhon
ENV NAKHON_DATA_DIR=/data NAKHON_FIRMWARE_DIR=/app/firmware
ENTRYPOINT ["nakhon"]
