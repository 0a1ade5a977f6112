# One image for every msgq service; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY msgq ./msgq
COPY schemas ./schemas
COPY worker ./worker
# The locked versions, then msgq itself with every extra (worker, api, simulator).
RUN pip install --no-cache-dir -r requirements.lock && pip install --no-cache-dir --no-deps .
USER nobody
ENTRYPOINT ["msgq"]
