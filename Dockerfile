# uptime-watchdog images, built from source (needs a registry for the Rust image).
#   docker build -t uptime-watchdog .                        # the watchdog (the last stage)
#   docker build --target demo-app -t uptime-watchdog-demo-app .   # examples/compose's app
# Without a registry, make the same images from a local build: examples/compose/build-local.sh.
#
# The final images hold the program, the libraries it links and nothing else (no shell, no
# package manager), and run as the unprivileged user 65532. A sidecar that uses the Docker
# socket needs the socket's group: see examples/compose/docker-compose.yml (group_add).

ARG RUST_IMAGE=rust:1-bookworm
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Two builds, the watchdog alone last: built together with an example, the examples'
# dev-dependency features would change the watchdog's symbols, and the linker would no longer
# find the functions of bench/symbol-order.txt (build.rs) to lay them out together.
RUN cargo build --release --locked --example fake_apache \
 && cargo build --release --locked --bin watchdog \
 && docker/rootfs.sh /out/watchdog-rootfs target/release/watchdog \
 && docker/rootfs.sh /out/demo-rootfs target/release/watchdog target/release/examples/fake_apache \
 && cp examples/compose/app-health.toml /out/demo-rootfs/root/etc/uptime-watchdog/health.toml

# The demo app of examples/compose: the fake apache, with the watchdog as its HEALTHCHECK.
FROM scratch AS demo-app
COPY --from=build /out/demo-rootfs/root/ /
COPY --from=build --chown=65532:65532 /out/demo-rootfs/state/ /var/lib/
USER 65532:65532
EXPOSE 8080 8081
# Docker reads 0 as healthy and anything else as unhealthy (it reserves 2); `watchdog check`
# exits 0 (all up), 1 (failing) or 78 (bad config).
HEALTHCHECK --interval=2s --timeout=2s --retries=2 --start-period=5s \
    CMD ["/usr/local/bin/watchdog", "check", "--config", "/etc/uptime-watchdog/health.toml"]
ENTRYPOINT ["/usr/local/bin/fake_apache", "--listen", "0.0.0.0:8080", "--control", "0.0.0.0:8081"]

# The watchdog.
FROM scratch AS watchdog
COPY --from=build /out/watchdog-rootfs/root/ /
COPY --from=build --chown=65532:65532 /out/watchdog-rootfs/state/ /var/lib/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/watchdog"]
CMD ["run", "--config", "/etc/uptime-watchdog/watchdog.toml"]
