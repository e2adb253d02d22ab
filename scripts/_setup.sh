# Sourced by scripts/run, scripts/test and friends: finds a Python >= 3.12, creates .venv
# and installs the project into it when pyproject.toml changed. mitmproxy 12 needs 3.12+;
# pip on an older Python silently installs mitmproxy 11, so never fall back to one.
set -euo pipefail

KIMIWIRE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$KIMIWIRE_ROOT/.venv"

_py_ok() {  # usage: _py_ok /path/to/python -> true when it is CPython >= 3.12
    [ -x "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null
}

find_python() {
    local cand
    if [ -n "${KIMIWIRE_PYTHON:-}" ]; then
        if _py_ok "$KIMIWIRE_PYTHON"; then echo "$KIMIWIRE_PYTHON"; return 0; fi
        echo "KIMIWIRE_PYTHON=$KIMIWIRE_PYTHON is not a Python 3.12 or newer." >&2
        return 1
    fi
    for cand in python3.14 python3.13 python3.12 python3; do
        cand="$(command -v "$cand" 2>/dev/null || true)"
        # pyenv shims exist for versions that are not selected; _py_ok runs them to be sure.
        if [ -n "$cand" ] && _py_ok "$cand"; then echo "$cand"; return 0; fi
    done
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [ -d "$root/versions" ]; then
        for cand in $(ls -1 "$root/versions" | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)?$' | sort -t. -k1,1n -k2,2n -k3,3n -r); do
            if _py_ok "$root/versions/$cand/bin/python"; then echo "$root/versions/$cand/bin/python"; return 0; fi
        done
    fi
    for cand in /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
        if _py_ok "$cand"; then echo "$cand"; return 0; fi
    done
    cat >&2 <<'MSG'
kimiwire needs Python 3.12 or newer (mitmproxy 12 does not run on older Pythons, and pip
would quietly install mitmproxy 11 instead). None was found on PATH or under pyenv.
Install one, for example:
    pyenv install 3.12        # then re-run this command
or point KIMIWIRE_PYTHON at an interpreter:
    KIMIWIRE_PYTHON=/path/to/python3.12 ./scripts/test
MSG
    return 1
}

_fresh() {  # usage: _fresh STAMP -> true when STAMP exists and is newer than pyproject.toml
    [ -f "$1" ] && ! [ "$KIMIWIRE_ROOT/pyproject.toml" -nt "$1" ]
}

ensure_venv() {
    if ! _py_ok "$VENV/bin/python"; then
        local py
        py="$(find_python)"
        echo "kimiwire: creating .venv with $py ($("$py" --version 2>&1))" >&2
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    fi
    # `ensure_venv` installs what the proxy needs; `ensure_venv test` adds the test tools (pytest,
    # hypothesis, the OpenAI SDK, ruff, ...), for scripts/test and the scripts built on the suite.
    local spec="$KIMIWIRE_ROOT" stamp="$VENV/.kimiwire-installed" what="the project"
    if [ "${1:-}" = "test" ]; then
        spec="$KIMIWIRE_ROOT[test]" stamp="$VENV/.kimiwire-installed-test" what="the project and its test tools"
    elif _fresh "$VENV/.kimiwire-installed-test"; then
        stamp="$VENV/.kimiwire-installed-test"
    fi
    if ! _fresh "$stamp"; then
        echo "kimiwire: installing $what into .venv" >&2
        "$VENV/bin/python" -m pip install -q -e "$spec" >&2
        touch "$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}
