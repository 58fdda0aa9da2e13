"""End-to-end round trip of the Python binding against a dev deployment.

Run by the system test `bindings::python_binding_round_trip_and_cross_client`
(crates/system-tests/tests/it/bindings.rs), which puts the module beside the library, starts
`bkv-admin dev up` and checks what the CLI makes of the result:

    python3 roundtrip.py MODULE_DIR CLIENT_TOML WORK_DIR

(MODULE_DIR may be empty when the package is installed.)

Prints one `key=value` line per result the Rust side checks.
"""

import filecmp
import os
import sys

module_dir, config, work = sys.argv[1], sys.argv[2], sys.argv[3]
if module_dir:
    sys.path.insert(0, module_dir)
import bkv_sdk as bkv  # noqa: E402  (installed, or generated into MODULE_DIR)


def path(name):
    return os.path.join(work, name)


client = bkv.Client(config, None, False)

# A backup made here; the CLI restores it (the Rust side checks).
made = client.create_backup("py-user", "py password 1", path("py-source.bin"))
print(f"py_backup={made.object}")
status = client.status("py-user")
assert status.record == bkv.RecordStatus.ACTIVE, status
assert status.guesses_remaining == status.guess_limit, status

# A wrong password counts and says how many guesses remain; the right one resets the count.
try:
    client.restore("py-user", "not it", path("never"))
    raise AssertionError("a wrong password restored")
except bkv.BkvError.WrongPassword as e:
    print(f"wrong_password_remaining={e.guesses_remaining}")
assert not os.path.exists(path("never"))
client.restore("py-user", "py password 1", path("py-restored.bin"))
assert filecmp.cmp(path("py-source.bin"), path("py-restored.bin"), shallow=False)
assert client.status("py-user").guesses_used == 0

# Protectors: a recovery key and a (software) passkey, each restoring on its own.
rk = client.add_recovery_key("py-user", "py password 1")
assert rk.recovery_key() not in repr(rk)
client.restore_with_recovery_key("py-user", rk.recovery_key(), path("py-rk.bin"))
assert filecmp.cmp(path("py-source.bin"), path("py-rk.bin"), shallow=False)
passkey = bkv.soft_passkey(path("py-passkeys.json"))
client.add_passkey("py-user", "py password 1", passkey)
client.restore_with_passkey("py-user", passkey, path("py-pk.bin"))
assert filecmp.cmp(path("py-source.bin"), path("py-pk.bin"), shallow=False)
kinds = sorted(p.kind for p in client.list_protectors("py-user"))
assert kinds == ["passkey", "password", "recovery-key"], kinds
print(f"recovery_key={rk.recovery_key()}")

# A second recovery key, removed: the key is rotated and the removed one opens nothing new.
spare = client.add_recovery_key("py-user", "py password 1")
removed = client.remove_protector("py-user", "py password 1", spare.id())
assert removed.protectors_left == 3, removed
try:
    client.restore_with_recovery_key("py-user", spare.recovery_key(), path("never"))
    raise AssertionError("a removed recovery key restored")
except bkv.BkvError:
    pass
try:
    client.remove_protector("py-user", "py password 1", "password")
    raise AssertionError("the binding removed the password it unlocks with")
except bkv.BkvError.Usage:
    pass

# A changed password: the old one is wrong from now on.
client.change_password("py-user", "py password 1", "py password 2")
try:
    client.restore("py-user", "py password 1", path("never"))
    raise AssertionError("the old password still restored")
except bkv.BkvError.WrongPassword:
    pass

# A backup the CLI made restores here.
client.restore("cli-user", "cli password", path("cli-restored.bin"))
assert filecmp.cmp(path("cli-source.bin"), path("cli-restored.bin"), shallow=False)

# The error codes the CLI's exit classes name.
try:
    client.restore("nobody", "x", path("never"))
    raise AssertionError("restored nothing")
except bkv.BkvError.NotFound:
    pass
try:
    client.restore_with_recovery_key("py-user", "not a recovery key", path("never"))
    raise AssertionError("a malformed recovery key was taken")
except bkv.BkvError.Usage:
    pass
# What the binding refuses before anything reaches the vault.
for bad in [
    lambda: client.create_backup("py-empty", "", path("py-source.bin")),
    lambda: client.create_backup("py-nofile", "a password", path("no such file")),
    lambda: client.status("not a user id\n"),
]:
    try:
        bad()
        raise AssertionError("accepted")
    except bkv.BkvError.Usage:
        pass
assert client.status("py-nofile").record == bkv.RecordStatus.ABSENT

# Storage is untrusted: a flipped byte in a stored backup is refused as tampering.
storage = next(
    line.split("=", 1)[1].strip().strip('"')
    for line in open(config)
    if line.startswith("storage_dir")
)
gone = client.create_backup("py-tamper", "tamper password", path("py-source.bin"))
for root, _dirs, files in os.walk(storage):
    if gone.object in files:
        stored = os.path.join(root, gone.object)
        with open(stored, "r+b") as f:
            f.seek(gone.size // 2)
            byte = f.read(1)
            f.seek(gone.size // 2)
            f.write(bytes([byte[0] ^ 1]))
try:
    client.restore("py-tamper", "tamper password", path("never"))
    raise AssertionError("a tampered backup restored")
except bkv.BkvError.Tampered:
    pass

# The guess limit: wrong passwords until the vault destroys the record.
client.create_backup("py-gone", "gone password", path("py-source.bin"))
for _ in range(client.status("py-gone").guess_limit + 1):
    try:
        client.restore("py-gone", "wrong again", path("never"))
    except bkv.BkvError.WrongPassword:
        continue
    except bkv.BkvError.Destroyed:
        break
try:
    client.restore("py-gone", "gone password", path("never"))
    raise AssertionError("a destroyed record restored")
except bkv.BkvError.Destroyed:
    pass
assert client.status("py-gone").record == bkv.RecordStatus.DESTROYED
print("done=ok")
