# syntax=docker/dockerfile:1
# Xnode image: a multi-stage build from the official Rust image to a slim, non-root runtime.
#
#   docker build -t xnode .                       # the usual build: compiles inside the `build` stage
#   docker build --target prebuilt -t xnode .     # same runtime image around a binary built on the host
#                                                 # (target/dist/xnode, `cargo build --profile dist`); where no
#                                                 # registry is reachable use scripts/docker-image.sh, which
#                                                 # makes a base image from Debian's packages when needed
#
# The binary is built with the `dist` profile (Cargo.toml): release, stripped of symbols and debug info, so the
# image carries ~the code only.
#
# The runtime stages come first so that `--target prebuilt` never needs the Rust image, even with the classic
# builder, which builds every stage above its target.

ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN groupadd --system --gid 10001 xnode \
 && useradd --system --uid 10001 --gid xnode --home-dir /data --shell /usr/sbin/nologin xnode \
 && mkdir -p /data /secrets && chown xnode:xnode /data /secrets
ENV XNODE_DATA_DIR=/data \
    XNODE_API_PORT=8080 \
    XNODE_GOSSIP_PORT=9090 \
    XNODE_P2P_PORT=10090
VOLUME ["/data"]
EXPOSE 8080/tcp 9090/udp 10090/tcp 10090/udp
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["xnode", "health"]
USER xnode
WORKDIR /data
ENTRYPOINT ["xnode"]
CMD ["run"]

FROM runtime-base AS prebuilt
COPY target/dist/xnode /usr/local/bin/xnode

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked --bin xnode

FROM runtime-base AS runtime
COPY --from=build /src/target/dist/xnode /usr/local/bin/xnode
