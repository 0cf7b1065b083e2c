"""User ids as logs show them, and the secret files behind them."""

from __future__ import annotations

import stat

import pytest

from retrieval.privacy import LOG_KEY_ENV, UserRefs, ensure_secret_file


def test_a_user_ref_is_a_stable_keyed_hash_that_hides_the_id():
    refs = UserRefs(b"k" * 32)
    ref = refs("alice@example.com")
    assert ref == refs("alice@example.com")  # the same user, the same reference
    assert ref.startswith("u:") and len(ref) == 18
    assert "alice" not in ref
    assert ref != refs("bob@example.com")
    assert ref != UserRefs(b"another key")("alice@example.com")  # keyed, not a plain hash
    with pytest.raises(ValueError, match="empty"):
        UserRefs(b"")


def test_the_log_key_is_made_once_in_the_data_folder_private_or_comes_from_the_environment(
    tmp_path,
):
    first = UserRefs.for_data_dir(tmp_path, environ={})
    key_file = tmp_path / ".log_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text()) == 64
    again = UserRefs.for_data_dir(tmp_path, environ={})  # another replica, the same key
    assert again("u1") == first("u1")
    from_env = UserRefs.for_data_dir(tmp_path, environ={LOG_KEY_ENV: "team secret"})
    assert from_env("u1") == UserRefs(b"team secret")("u1") != first("u1")


def test_a_secret_file_that_exists_is_kept_and_its_mode_narrowed(tmp_path):
    path = tmp_path / "token"
    path.write_text("kept")
    path.chmod(0o644)
    ensure_secret_file(path)
    assert path.read_text() == "kept"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
