# One image for every msgq service; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY worker ./worker
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["msgq"]
