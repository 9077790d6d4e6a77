#!/usr/bin/env bash
# Makes a cluster CA and, per node, a server and a client certificate for
# replication mutual TLS:
#   scripts/gen-certs.sh DIR NAME [NAME...]
# writes DIR/ca.pem, DIR/ca.key and for each name
#   DIR/NAME.pem         server certificate (extendedKeyUsage serverAuth): a
#                        secondary's replication listener
#   DIR/NAME-client.pem  client certificate (clientAuth): what a primary dials with
#   DIR/NAME.key         the node's key (both certificates are for it)
# Both name the node in their subjectAltName (DNS:NAME; the server certificate also
# DNS:localhost and IP:127.0.0.1 for loopback tests): the dialer checks the
# replica's name against it and the listener checks the primary's claimed name.
# GEOREG_CERT_SAN overrides the server certificate's SAN (tests make a
# wrong-name certificate with it). Existing files are kept.
set -euo pipefail
dir="$1"; shift
mkdir -p "$dir"
cd "$dir"
if [ ! -f ca.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=georeg cluster CA" -keyout ca.key -out ca.pem 2>/dev/null
fi
for name in "$@"; do
    if [ ! -f "$name.key" ]; then
        openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out "$name.key" 2>/dev/null
    fi
    if [ ! -f "$name.pem" ]; then
        openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr" 2>/dev/null
        san="${GEOREG_CERT_SAN:-DNS:$name,DNS:localhost,IP:127.0.0.1}"
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n' \
            "$san" > "$name.ext"
        openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile "$name.ext" -out "$name.pem" 2>/dev/null
        rm -f "$name.csr" "$name.ext"
    fi
    if [ ! -f "$name-client.pem" ]; then
        openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr" 2>/dev/null
        printf 'subjectAltName=DNS:%s\nextendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n' \
            "$name" > "$name.ext"
        openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile "$name.ext" -out "$name-client.pem" 2>/dev/null
        rm -f "$name.csr" "$name.ext"
    fi
done
chmod 600 ./*.key
