# The tokenrelay container image: a statically linked binary, CA roots and a non-root user on
# `scratch`: no shell, no package manager, nothing else to patch.
#
# The `build` stage compiles the binary and lays out the runtime filesystem under /out. It can
# be replaced by a local directory with the same layout (out/usr/local/bin/tokenrelay,
# out/etc/...), which is how CI and the release workflow build the image from binaries they
# built already (packaging/image/stage.sh makes that directory):
#
#   buildah bud --build-context build=DIR -t tokenrelay .     # or: docker buildx build --build-context build=DIR .
#   docker build -t tokenrelay .                              # compiles in the build stage
#
# Static linking uses glibc's crt-static on x86_64-unknown-linux-gnu / aarch64-unknown-linux-gnu
# (no musl toolchain needed); the binary resolves names with the built-in "files" and "dns"
# lookups of the /etc/nsswitch.conf below.
FROM docker.io/library/rust:1.95-bookworm AS build
ARG TARGETARCH=amd64
WORKDIR /src
COPY . .
RUN case "$TARGETARCH" in amd64) t=x86_64-unknown-linux-gnu ;; arm64) t=aarch64-unknown-linux-gnu ;; \
        *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; esac \
    && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p tokenrelay-cli --target "$t" \
    && packaging/image/stage.sh "target/$t/release/tokenrelay" /etc/ssl/certs/ca-certificates.crt /

FROM scratch
COPY --from=build /out/ /
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    TOKENRELAY_CACHE_DIR=/tmp/tokenrelay
USER 65532:65532
ENTRYPOINT ["tokenrelay"]
CMD ["--help"]
