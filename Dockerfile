# themis serve as a container: a static-ish binary on a slim base, non-root, read-only root
# filesystem (run with --read-only / readOnlyRootFilesystem), state on a volume.
#   docker build -t themis .
#   docker run --read-only -v themis-state:/var/lib/themis -p 9464:9464 \
#     -e THEMIS_INTAKE_TOKEN -e THEMIS_TOKEN themis
FROM rust:1-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2 \
    && apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
# Step components for wasm32-wasip2, signed with the bundles' keys (replace keys/demo with your
# teams' keys in a real build), then the host.
RUN scripts/build-runbooks && cargo build --release --locked --bin themis

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/themis --shell /usr/sbin/nologin themis \
    && mkdir -p /var/lib/themis && chown themis /var/lib/themis && chmod 0700 /var/lib/themis
COPY --from=build /src/target/release/themis /usr/local/bin/themis
COPY --from=build /src/agents /etc/themis/agents
COPY --from=build /src/runbooks /etc/themis/runbooks
COPY --from=build /src/keys /etc/themis/keys
COPY deploy/themis.yaml /etc/themis/themis.yaml
USER 10001
VOLUME /var/lib/themis
EXPOSE 9464
ENV THEMIS_CONFIG=/etc/themis/themis.yaml
HEALTHCHECK CMD ["/usr/local/bin/themis", "--version"]
ENTRYPOINT ["/usr/local/bin/themis", "serve"]
