# Sourced by the launch scripts: picks the harl CLI from the project's .venv when it is not on PATH.
# Usage inside a script: source "$(dirname "$0")/../../_harl.sh"; harl_cli harl-pretrain ...
HARL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
harl_cli() {
    local tool="$1"; shift
    if command -v "$tool" >/dev/null 2>&1; then
        "$tool" "$@"
    elif [ -x "$HARL_ROOT/.venv/bin/$tool" ]; then
        "$HARL_ROOT/.venv/bin/$tool" "$@"
    else
        echo "error: '$tool' not found; install harl first (bash scripts/install.sh or pip install -e .)" >&2
        return 127
    fi
}
