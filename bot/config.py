"""Settings from the environment and ``.env``; every one is documented in ``.env.example`` and docs/operators.md.

Every setting is checked when it is read, before anything is touched: a bad one stops the program with one line
per setting that names it, the value given and what is allowed (:func:`load_settings`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Shipped inside the package, so that it is there wherever the package is installed.
SAMPLE_COMMUNITY = Path(__file__).resolve().parent / "communities" / "sample.toml"
LOCALES = Path(__file__).resolve().parent / "locales"
# Relative to the directory the bot is started in (never inside the installed package).
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/bot.sqlite3"
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")
PROXY_SCHEMES = ("socks5", "socks5h", "socks4", "http")
# Telegram's rule for the secret token of a webhook.
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


class MissingToken(SystemExit):
    def __init__(self) -> None:
        super().__init__(
            "BOT_TOKEN is not set: talk to @BotFather in Telegram, send /newbot, and put the token it gives "
            "you in .env as BOT_TOKEN=... (or in the environment)."
        )


class SettingsError(SystemExit):
    """Bad settings: one line each, naming the setting, the value and what is allowed."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def proxy_for_aiohttp(proxy: str) -> str:
    """TELEGRAM_PROXY as aiohttp-socks takes it: it resolves host names through the proxy either way and knows
    only the scheme socks5 for it."""
    return proxy.replace("socks5h://", "socks5://", 1)


def hide_password(url: str) -> str:
    """A URL as it may be shown in a log line or an error: without its password."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return url
    return urlunsplit(parts._replace(netloc=netloc))


def _url(value: str, schemes: tuple[str, ...], example: str) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port  # a port that is not a number raises here
    except ValueError as error:
        raise ValueError(f"not a URL ({error}); e.g. {example}") from None
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}, e.g. {example}")
    if not parts.hostname:
        raise ValueError(f"has no host, e.g. {example}")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    bot_token: SecretStr | None = None
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    telegram_api_server: str | None = None
    # socks5://, socks5h://, socks4:// or http://, with user:password@ if the proxy asks for them.
    telegram_proxy: str | None = None
    default_locale: str = "zh_CN"
    timezone: str = "Asia/Shanghai"
    community_file: Path | None = SAMPLE_COMMUNITY
    bot_username: str | None = None
    send_rate_per_second: float = Field(default=25.0, gt=0)
    send_rate_per_chat_seconds: float = Field(default=1.0, ge=0)
    # How long a reply to the person in front of the bot is retried through 429s, 5xx and network errors
    # before it is given up (the change it reports stays saved); the person waits at most about this long.
    reply_retry_seconds: float = Field(default=30.0, ge=0)
    # Days a resident has to answer "Is it fixed?" before the ticket closes as "resolved, unconfirmed";
    # one reminder goes out at half that time.
    confirm_within_days: float = Field(default=7.0, gt=0)
    # Three-colour ledger: a ticket turns yellow when less than this share of its deadline's window is left.
    ledger_yellow_share: float = Field(default=0.25, gt=0, lt=1)
    # Personal messages (cards, notices) are retried through Telegram outages for this many hours after queueing.
    outbox_retry_hours: float = Field(default=24.0, gt=0)
    # A step that waits for someone's words (a reason, a note, a report's next page) ends after this many minutes;
    # what they send later is taken as new (a report), not as the answer to an old question.
    text_step_timeout_minutes: float = Field(default=30.0, gt=0)
    # A scheduled broadcast the bot was down for is still sent when it comes back within this many hours.
    broadcast_grace_hours: float = Field(default=12.0, ge=0)
    # Webhook mode (several processes behind a load balancer) when WEBHOOK_URL is set; long polling otherwise.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_listen_host: str = "127.0.0.1"
    webhook_listen_port: int = Field(default=8080, ge=1, le=65535)
    # Keep the webhook registered when a process stops (the others, and the next start, still need it).
    webhook_delete_on_stop: bool = False
    # Long polling: serve GET /healthz on this port (on WEBHOOK_LISTEN_HOST); webhook mode serves it on its own
    # port. None: no listener.
    health_port: int | None = Field(default=None, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["plain", "json"] = "plain"

    # The key of the keyed hash (HMAC-SHA256) kept instead of the household register's phone numbers and the
    # numbers residents share. Unset: no register can be imported, and residents are verified by their grid worker.
    household_phone_secret: SecretStr | None = None

    @field_validator(
        "community_file",
        "telegram_api_server",
        "telegram_proxy",
        "redis_url",
        "bot_username",
        "webhook_url",
        "webhook_secret",
        "health_port",
        mode="before",
    )
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # COMMUNITY_FILE= in .env means "import nothing", not "the current directory".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        return value.upper() if value.lower() in ("debug", "info", "warning", "error") else value.lower()

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if "://" not in value or scheme not in DATABASE_SCHEMES:
            raise ValueError(
                "must start with sqlite+aiosqlite:/// (a file) or postgresql+asyncpg:// (a server), "
                "e.g. sqlite+aiosqlite:///data/bot.sqlite3"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        return None if value is None else _url(value, ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0")

    @field_validator("telegram_api_server")
    @classmethod
    def _api_server(cls, value: str | None) -> str | None:
        return None if value is None else _url(value.rstrip("/"), ("http", "https"), "http://127.0.0.1:8081")

    @field_validator("telegram_proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _url(value, PROXY_SCHEMES, "socks5://127.0.0.1:1080")
        if urlsplit(value).port is None:
            raise ValueError("has no port, e.g. socks5://127.0.0.1:1080")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else _url(value, ("https", "http"), "https://bot.example.org/telegram")

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not WEBHOOK_SECRET.fullmatch(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)")
        return value

    @field_validator("default_locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        available = sorted(path.name for path in LOCALES.iterdir() if (path / "LC_MESSAGES").is_dir())
        if value not in available:
            raise ValueError(f"must be one of {', '.join(available)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("not a time zone; use a name such as Asia/Shanghai or Asia/Urumqi") from None
        return value

    @field_validator("bot_username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().removeprefix("@")
        if not value.replace("_", "").isalnum() or not value.isascii() or not 5 <= len(value) <= 32:
            raise ValueError("must be the bot's @username without @: 5-32 letters, digits or _")
        return value

    @model_validator(mode="after")
    def _webhook_needs(self) -> Settings:
        if self.webhook_url is None:
            return self
        if self.webhook_secret is None:
            raise ValueError(
                "WEBHOOK_SECRET is required with WEBHOOK_URL: 1-256 characters of A-Z, a-z, 0-9, _ and -, "
                "so that only Telegram can post updates"
            )
        if urlsplit(self.webhook_url).scheme != "https" and self.telegram_api_server is None:
            raise ValueError(
                f"WEBHOOK_URL={self.webhook_url}: Telegram only posts to https:// URLs "
                "(plain http:// works only with a local Bot API server, TELEGRAM_API_SERVER)"
            )
        return self

    def phone_secret(self) -> bytes:
        """The phone-number key as bytes; empty when it is not set."""
        secret = self.household_phone_secret
        return secret.get_secret_value().strip().encode() if secret is not None else b""

    def require_token(self) -> str:
        if self.bot_token is None or not self.bot_token.get_secret_value().strip():
            raise MissingToken()
        return self.bot_token.get_secret_value().strip()

    @property
    def telegram_where(self) -> str:
        """Where Telegram is reached, for log lines: the server, and the proxy if there is one."""
        where = self.telegram_api_server or "api.telegram.org"
        return f"{where} through the proxy {hide_password(self.telegram_proxy)}" if self.telegram_proxy else where


# Never shown in an error: every setting typed SecretStr (a token, a secret, a key).
SECRET_SETTINGS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
URL_SETTINGS = frozenset({"database_url", "redis_url", "telegram_proxy", "telegram_api_server", "webhook_url"})


def load_settings(**values: Any) -> Settings:
    """The settings, or :class:`SettingsError` with one line per bad setting."""
    try:
        return Settings(**values)
    except ValidationError as error:
        raise SettingsError([_describe(problem) for problem in error.errors()]) from None


def _describe(problem: Any) -> str:
    location = problem.get("loc") or ()
    message = str(problem.get("msg", "")).removeprefix("Value error, ").removeprefix("Input ")
    if not location:  # a rule about several settings: the message names them
        return message
    name = str(location[0])
    given = problem.get("input")
    if name in SECRET_SETTINGS:
        shown = "(hidden)"
    elif name in URL_SETTINGS and isinstance(given, str):
        shown = hide_password(given)
    else:
        shown = str(given)
    return f"{name.upper()}={shown}: {message}"
