#!/usr/bin/env bash
# Make the credentials of a fedprune federation: a certificate authority, the
# SuperLink's TLS certificate and one EC key pair per SuperNode.
#
#   docker/certs/generate.sh [-o DIR] [-n NODES] [-f] [ADDRESS ...]
#
#   -o DIR     where to write them (default: the folder of this script)
#   -n NODES   how many SuperNode key pairs (default: 3)
#   -f         overwrite credentials that exist (default: keep them)
#   ADDRESS    extra names the SuperLink is reached by: a LAN IP address
#              (192.168.1.20) or a host name (fl-server.local); repeatable
#
# The server certificate is valid for localhost, 127.0.0.1, the compose service
# names "superlink" and "fleet-gateway" and every ADDRESS. Files written:
#
#   ca.crt, ca.key           the certificate authority (keep ca.key off devices)
#   server.crt, server.key   the SuperLink's certificate and key
#   node-<i>, node-<i>.pub   SuperNode <i>'s private and public key (i = 0..NODES-1)
#   node-keys.txt            the public keys, one a line, to register with
#                            `flwr supernode register`
#   superexec.secret         the shared secret of the SuperLink and the ServerApp's
#                            SuperExec (--superexec-auth-secret-file), server only
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)"
nodes=3
force=0
while getopts "o:n:fh" opt; do
  case "$opt" in
    o) out="$OPTARG" ;;
    n) nodes="$OPTARG" ;;
    f) force=1 ;;
    h) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [-o DIR] [-n NODES] [-f] [ADDRESS ...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

if ! [[ "$nodes" =~ ^[0-9]+$ ]] || [ "$nodes" -lt 1 ]; then
  echo "error: -n NODES must be an integer >= 1, not '$nodes'" >&2
  exit 2
fi
for tool in openssl ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' is needed (apt-get install openssl openssh-client)" >&2; exit 2; }
done

# Subject alternative names: what a client may dial to reach the SuperLink.
san="DNS:localhost,IP:127.0.0.1,DNS:superlink,DNS:fleet-gateway"
for address in "$@"; do
  if [[ "$address" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || [[ "$address" =~ ^[0-9A-Fa-f:]*:[0-9A-Fa-f:]*$ ]]; then
    san="$san,IP:$address"
  elif [[ "$address" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    san="$san,DNS:$address"
  else
    echo "error: '$address' is neither an IP address nor a host name" >&2
    exit 2
  fi
done

mkdir -p "$out"
cd "$out"
if [ -e ca.crt ] && [ "$force" -eq 0 ]; then
  echo "error: $out/ca.crt exists; pass -f to make new credentials (every node must then get its new files)" >&2
  exit 2
fi
rm -f ca.crt ca.key ca.srl server.crt server.key server.csr superexec.secret node-keys.txt node-*

umask 077
openssl genrsa -out ca.key 4096 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 825 -subj "/CN=fedprune federation CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

openssl genrsa -out server.key 4096 2>/dev/null
openssl req -new -key server.key -subj "/CN=superlink" -out server.csr
extensions="$(mktemp)"
trap 'rm -f "$extensions"' EXIT
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
  "$san" >"$extensions"
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
  -extfile "$extensions" -out server.crt 2>/dev/null
rm -f server.csr ca.srl
openssl rand -hex 32 >superexec.secret

for ((i = 0; i < nodes; i++)); do
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedprune-node-$i" -f "node-$i"
  cat "node-$i.pub" >>node-keys.txt
done
# Certificates and public keys are public, private keys readable by their owner
# only; Flower's containers run as uid 49999: `chown 49999:49999` the files a
# container is given (see docker/README.md).
chmod 644 ca.crt server.crt node-keys.txt node-*.pub
chmod 600 ca.key server.key superexec.secret
for ((i = 0; i < nodes; i++)); do chmod 600 "node-$i"; done

echo "credentials in $out: CA, server certificate for $san, $nodes node key pairs"
