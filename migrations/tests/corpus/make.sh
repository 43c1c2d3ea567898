#!/bin/sh
# Regenerates the corpus (*.db and expected.json) in this folder: makes Python virtual
# environments with SQLAlchemy 1.3, 1.4 and 2.0 and Alembic from PyPI (once; kept in
# $CORPUS_VENVS), then runs make.py, which also drives the sqlite3 shell.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venvs=${CORPUS_VENVS:-${TMPDIR:-/tmp}/tgbot-corpus-venvs}
command -v sqlite3 >/dev/null || { echo "make.sh needs the sqlite3 shell: apt-get install sqlite3" >&2; exit 1; }
mkdir -p "$venvs"
for version in 1.3.24 1.4.54 2.0.36; do
    if [ ! -x "$venvs/sa$version/bin/alembic" ]; then
        python3 -m venv "$venvs/sa$version"
        "$venvs/sa$version/bin/pip" install --quiet "SQLAlchemy==$version" "alembic==1.12.1"
    fi
done
rm -f "$here"/*.db "$here"/*.db-wal "$here"/*.db-shm
python3 "$here/make.py" build --out "$here" --venvs "$venvs"
echo "made $(ls "$here"/*.db | wc -l) databases; expected verdicts in $here/expected.json"
