"""The Python binding in a few lines: back up a file, see the guesses left, restore it.

    python3 quickstart.py CLIENT_TOML FILE

(`scripts/try-bindings.sh` starts a dev deployment and runs this with the package built.)
"""

import os
import sys
import tempfile

import bkv_sdk as bkv

config, source = sys.argv[1], sys.argv[2]
client = bkv.Client(config, None, False)  # None: ask the dev deployment's token endpoint
made = client.create_backup("alice", "my password", source)
print(f"backed up {source}: {made.object} ({made.size} bytes encrypted)")
try:
    client.restore("alice", "not my password", os.path.join(tempfile.mkdtemp(), "x"))
except bkv.BkvError.WrongPassword as e:
    print(f"wrong password: {e.guesses_remaining} guesses remaining")
status = client.status("alice")
print(f"status: {status.record.name.lower()}, {status.guesses_remaining} of {status.guess_limit} left")
out = os.path.join(tempfile.mkdtemp(), "restored")
client.restore("alice", "my password", out)
print(f"restored to {out}")
rk = client.add_recovery_key("alice", "my password")
print(f"recovery key (shown once): {rk.recovery_key()}")
