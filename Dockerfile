# Builds the athena binary and runs it on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin athena

FROM debian:bookworm-slim
RUN useradd --system --no-create-home athena
COPY --from=build /src/target/release/athena /usr/local/bin/athena
USER athena
EXPOSE 8080
ENTRYPOINT []
CMD ["athena", "serve", "--bind", "0.0.0.0:8080"]
