#!/bin/sh
# Starts a software TPM for development under STATE_DIR/swtpm (default ./target/fog-state),
# with its own local CA (nothing written under /var/lib), listening on 127.0.0.1:2321 (TPM)
# and 2322 (control). Idempotent: does nothing when it is already running.
# `fog-agent serve --dev` uses TCTI swtpm:host=127.0.0.1,port=2321 when /dev/tpmrm0 is absent.
set -eu
STATE_DIR=${1:-./target/fog-state}
PORT=${FOG_SWTPM_PORT:-2321}
mkdir -p "$STATE_DIR"
D=$(cd "$STATE_DIR" && pwd)/swtpm   # swtpm --daemon changes to /: the path must be absolute
mkdir -p "$D/localca" "$D/state"
if [ -f "$D/swtpm.pid" ] && kill -0 "$(cat "$D/swtpm.pid")" 2>/dev/null; then
    echo "swtpm already running (pid $(cat "$D/swtpm.pid")), TCTI swtpm:host=127.0.0.1,port=$PORT"
    exit 0
fi
if [ ! -f "$D/state/tpm2-00.permall" ]; then
    cat > "$D/swtpm-localca.conf" <<CONF
statedir = $D/localca
signingkey = $D/localca/signkey.pem
issuercert = $D/localca/issuercert.pem
certserial = $D/localca/certserial
CONF
    cat > "$D/swtpm_setup.conf" <<CONF
create_certs_tool= /usr/bin/swtpm_localca
create_certs_tool_config = $D/swtpm-localca.conf
create_certs_tool_options = /etc/swtpm-localca.options
active_pcr_banks = sha256
CONF
    swtpm_setup --tpm2 --tpmstate "$D/state" --config "$D/swtpm_setup.conf" \
        --create-ek-cert --create-platform-cert --overwrite >"$D/setup.log" 2>&1 \
        || { cat "$D/setup.log" >&2; exit 1; }
fi
swtpm socket --tpm2 \
    --server type=tcp,port="$PORT",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((PORT + 1)),bindaddr=127.0.0.1 \
    --tpmstate dir="$D/state" --flags not-need-init,startup-clear \
    --pid file="$D/swtpm.pid" --daemon
echo "swtpm started (pid $(cat "$D/swtpm.pid")), TCTI swtpm:host=127.0.0.1,port=$PORT"
echo "its EK CA: $D/localca/swtpm-localca-rootca-cert.pem"
