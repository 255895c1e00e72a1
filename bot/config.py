"""Settings from the environment and ``.env``; every one is documented in ``.env.example``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class MissingToken(SystemExit):
    def __init__(self) -> None:
        super().__init__(
            "BOT_TOKEN is not set: talk to @BotFather in Telegram, send /newbot, and put the token it gives "
            "you in .env as BOT_TOKEN=... (or in the environment)."
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    bot_token: SecretStr | None = None
    database_url: str = f"sqlite+aiosqlite:///{PROJECT_ROOT / 'data' / 'bot.sqlite3'}"
    redis_url: str | None = None
    telegram_api_server: str | None = None
    default_locale: str = "zh_CN"
    timezone: str = "Asia/Shanghai"
    community_file: Path | None = PROJECT_ROOT / "communities" / "sample.toml"
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
    # A scheduled broadcast the bot was down for is still sent when it comes back within this many hours.
    broadcast_grace_hours: float = Field(default=12.0, ge=0)
    # The key of the keyed hash (HMAC-SHA256) kept instead of the household register's phone numbers and the
    # numbers residents share. Unset: no register can be imported, and residents are verified by their grid worker.
    household_phone_secret: SecretStr | None = None

    @field_validator("community_file", "telegram_api_server", "redis_url", "bot_username", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # COMMUNITY_FILE= in .env means "import nothing", not "the current directory".
        return None if isinstance(value, str) and not value.strip() else value

    def phone_secret(self) -> bytes:
        """The phone-number key as bytes; empty when it is not set."""
        secret = self.household_phone_secret
        return secret.get_secret_value().strip().encode() if secret is not None else b""

    def require_token(self) -> str:
        if self.bot_token is None or not self.bot_token.get_secret_value().strip():
            raise MissingToken()
        return self.bot_token.get_secret_value().strip()
