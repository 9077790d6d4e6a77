#!/usr/bin/env bash
# Makes a cluster CA and one certificate per node for replication mutual TLS:
#   scripts/gen-certs.sh DIR NAME [NAME...]
# writes DIR/ca.pem, DIR/ca.key and DIR/NAME.pem + DIR/NAME.key for each name
# (SAN: DNS:NAME, DNS:localhost, IP:127.0.0.1). Existing files are kept.
set -euo pipefail
dir="$1"; shift
mkdir -p "$dir"
cd "$dir"
if [ ! -f ca.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=georeg cluster CA" -keyout ca.key -out ca.pem 2>/dev/null
fi
for name in "$@"; do
    [ -f "$name.pem" ] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' \
        "$name" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$name.ext" -out "$name.pem" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
done
chmod 600 ./*.key
