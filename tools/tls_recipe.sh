#!/bin/sh
# A small certificate authority and a server certificate it signs, for msgstream over TLS.
#
#   tools/tls_recipe.sh [DIR] [NAME...]
#
# DIR (default ./certs) gets:
#   ca.pem          the CA certificate: give it to clients (--ca ca.pem, cafile="ca.pem")
#   ca-key.pem      the CA's private key: keep it off the server, it signs server certificates
#   server.pem      the server certificate, for --cert
#   server-key.pem  its private key, for --key
# The server certificate names localhost and 127.0.0.1, plus each NAME: a host name
# (jobs.example.com) or an IP address (10.0.0.5, ::1). Clients check that the name they
# connect to is one of these.
#
# Run again to renew the server certificate (new names, new key): an existing CA in DIR is
# kept, so clients keep trusting it. Needs openssl 1.1.1 or later. docs/tls.md explains why
# each extension is there (rustls, the TLS stack of Deno, refuses the usual one-step
# self-signed certificate).
#
# Environment: DAYS (server certificate lifetime, default 365), CA_DAYS (default 3650).
set -eu

dir=${1:-certs}
[ $# -gt 0 ] && shift
days=${DAYS:-365}
ca_days=${CA_DAYS:-3650}

command -v openssl >/dev/null 2>&1 || {
  echo "tls_recipe.sh: openssl not found" >&2
  exit 1
}

san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  case $name in
    *[!0-9.]*)
      case $name in
        *:*) san="$san,IP:$name" ;; # IPv6
        *) san="$san,DNS:$name" ;;
      esac
      ;;
    *) san="$san,IP:$name" ;; # IPv4
  esac
done

mkdir -p "$dir"
umask 077 # private keys readable by their owner only
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/ca-key.pem" ]; then
  # The CA: may sign certificates (keyCertSign), but no further CAs (pathlen:0).
  cat >"$tmp/ca.cnf" <<EOF
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = msgstream local CA
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -newkey rsa:3072 -nodes -sha256 -days "$ca_days" \
    -config "$tmp/ca.cnf" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>"$tmp/log" ||
    { cat "$tmp/log" >&2; exit 1; }
  echo "tls_recipe.sh: new CA $dir/ca.pem"
fi

# The server's certificate: not a CA (rustls refuses a CA certificate as a server's own), for
# TLS servers only, naming every host and address clients connect to.
cat >"$tmp/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=msgstream server" \
  -keyout "$tmp/server-key.pem" -out "$tmp/server.csr" 2>"$tmp/log" ||
  { cat "$tmp/log" >&2; exit 1; }
openssl x509 -req -sha256 -days "$days" -in "$tmp/server.csr" \
  -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -set_serial "0x$(openssl rand -hex 16)" \
  -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>"$tmp/log" ||
  { cat "$tmp/log" >&2; exit 1; }
openssl verify -CAfile "$dir/ca.pem" "$tmp/server.pem" >/dev/null
mv "$tmp/server-key.pem" "$dir/server-key.pem"
mv "$tmp/server.pem" "$dir/server.pem"
chmod 644 "$dir/ca.pem" "$dir/server.pem"
echo "tls_recipe.sh: $dir/server.pem and $dir/server-key.pem for $san (valid $days days)"
