# One image with the three binaries; docker-compose.yml picks the command per service.
FROM rust:1-bookworm AS build
# libclang for RocksDB's bindings; OpenSSL headers for librdkafka's TLS and SASL/SCRAM.
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev libssl-dev pkg-config cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin schema-registry --bin command-service --bin query-service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libstdc++6 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/schema-registry /src/target/release/command-service /src/target/release/query-service /usr/local/bin/
