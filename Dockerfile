# One multi-stage build for remora's images:
#   docker build --target webhook -t remora-webhook .
#   docker build --target init    -t remora-init .
#   docker build --target proxy   -t remora-proxy .
#   docker build --target cni     -t remora-cni .    (CNI mode's node agent and plugin)
# (scripts/images builds all of them where a Docker engine exists.)
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p remora-webhook -p remora-init -p remora-proxy -p remora-cni

# The proxy and the webhook need only libc: a distroless base, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot AS webhook
COPY --from=build /src/target/release/remora-webhook /usr/local/bin/remora-webhook
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/remora-webhook"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12 AS proxy
COPY --from=build /src/target/release/remora-proxy /usr/local/bin/remora-proxy
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/remora-proxy"]
CMD ["run"]

# The init program drives iptables-restore/iptables-save (nft and legacy backends).
FROM debian:bookworm-slim AS init
RUN apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/remora-init /usr/local/bin/remora-init
ENTRYPOINT ["/usr/local/bin/remora-init"]

# CNI mode: the node agent copies the plugin onto the node; the plugin runs there, on the host's
# iptables tools. Root (the host's CNI directories are root's), no capabilities (manifests/cni.yaml).
FROM gcr.io/distroless/cc-debian12 AS cni
COPY --from=build /src/target/release/remora-cni /usr/local/bin/remora-cni
COPY --from=build /src/target/release/remora-cni-node /usr/local/bin/remora-cni-node
ENTRYPOINT ["/usr/local/bin/remora-cni-node"]
CMD ["run"]
