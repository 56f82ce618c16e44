#!/usr/bin/env bash
# Run the test suite. pytest's exit code 5 means "no tests were collected":
# for kubetune that is always a mistake (a broken path or marker), never a pass.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "run-tests: pytest collected no tests; failing on purpose" >&2
  exit 1
fi
exit $rc
