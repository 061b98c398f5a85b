"""Settings: command line over ROOMCHAT_* variables over defaults; bad values are usage errors."""

import pytest

from chatserver.config import Config, build_parser, from_args


def test_defaults():
    """With nothing set, the documented defaults apply."""
    config = from_args([], environ={})
    assert (config.host, config.port, config.rate_burst, config.rate_per_second) == ("127.0.0.1", 8765, 20, 5.0)


def test_environment_then_command_line():
    """ROOMCHAT_<NAME> sets an option; the command line wins over it."""
    env = {"ROOMCHAT_PORT": "9001", "ROOMCHAT_RATE_PER_SECOND": "2.5", "ROOMCHAT_MAX_TEXT_CHARS": "99"}
    config = from_args(["--max-text-chars", "50"], environ=env)
    assert (config.port, config.rate_per_second, config.max_text_chars) == (9001, 2.5, 50)


@pytest.mark.parametrize("argv, env", [
    (["--rate-burst", "0"], {}),
    (["--port", "70000"], {}),
    ([], {"ROOMCHAT_PORT": "not-a-number"}),
    (["--log-level", "LOUD"], {}),
    (["--ping-timeout", "-1"], {}),
    (["--keyfile", "key.pem"], {}),
    (["--allow-origin", "example.org"], {}),
    (["--allowed-hosts", "a b"], {}),
    ([], {"ROOMCHAT_TRUSTED_PROXY": "10.0.0.0/33"}),
])
def test_bad_values_exit_with_usage(argv, env):
    """A value out of range or of the wrong type exits with status 2 and a usage line."""
    with pytest.raises(SystemExit) as info:
        from_args(argv, environ=env)
    assert info.value.code == 2


def test_help_names_every_option_and_variable():
    """--help documents each setting with its variable."""
    text = build_parser().format_help()
    for name in Config.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text and "ROOMCHAT_" + name.upper() in text


def test_list_settings_repeat_or_take_commas():
    """List settings take the option several times or comma-separated values; the variable takes
    comma-separated values; the command line wins over the variable."""
    config = from_args(["--allow-origin", "https://a.example, https://b.example", "--allow-origin", "null"],
                       environ={"ROOMCHAT_TRUSTED_PROXY": "10.0.0.1,192.168.0.0/16",
                                "ROOMCHAT_ALLOW_ORIGIN": "https://ignored.example"})
    assert config.allow_origin == ("https://a.example", "https://b.example", "null")
    assert config.trusted_proxy == ("10.0.0.1", "192.168.0.0/16")
    assert config.allowed_hosts == () and config.certfile == ""


def test_help_explains_tls_and_exposure():
    """--help says what is checked on a network (Origin 403, Host 400), how to turn on TLS and where
    proxies go."""
    text = " ".join(build_parser().format_help().split())
    for words in ("Origin", "403", "Host", "400", "--certfile", "https:// and wss://", "--trusted-proxy",
                  "docs/deploy.md"):
        assert words in text, words
