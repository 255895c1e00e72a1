"""TELEGRAM_PROXY: the bot's real aiohttp session reaches a loopback fake Bot API through a loopback SOCKS5 or HTTP
proxy written here; a proxy that cannot be used is one line naming it, and the bot keeps trying."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiogram.exceptions import TelegramNetworkError

from bench.fake_api import FakeBotAPI
from bot.app import create_bot
from tests.processes import run_until_polling

TOKEN = "4242:PROXY-TEST"


@dataclass
class LoopbackProxy:
    """A small SOCKS5 (RFC 1928, with RFC 1929 user/password) or HTTP CONNECT proxy on 127.0.0.1."""

    kind: str  # "socks5" or "http"
    credentials: tuple[str, str] | None = None
    tunnels: list[tuple[str, int]] = field(default_factory=list)  # where clients asked to go, as they named it
    refused: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target = await (self._socks5(reader, writer) if self.kind == "socks5" else self._connect(reader, writer))
            if target is None:
                self.refused += 1
                return
            self.tunnels.append(target)
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _socks5(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, int] | None:
        _version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        wanted = 0x02 if self.credentials else 0x00
        if wanted not in methods:
            writer.write(b"\x05\xff")
            return None
        writer.write(bytes([5, wanted]))
        if self.credentials:
            _sub, size = await reader.readexactly(2)
            user = (await reader.readexactly(size)).decode()
            (size,) = await reader.readexactly(1)
            password = (await reader.readexactly(size)).decode()
            if (user, password) != self.credentials:
                writer.write(b"\x01\x01")
                return None
            writer.write(b"\x01\x00")
        _version, _command, _reserved, address_type = await reader.readexactly(4)
        if address_type == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif address_type == 3:
            (size,) = await reader.readexactly(1)
            host = (await reader.readexactly(size)).decode()
        else:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        writer.write(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")
        return host, port

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[str, int] | None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return None
        host, port = target.rsplit(":", 1)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


@pytest.fixture
async def telegram() -> AsyncIterator[str]:
    fake = FakeBotAPI(4242, username="proxied_bot")
    url = await fake.start()
    yield url
    await fake.stop()


async def started(proxy: LoopbackProxy) -> LoopbackProxy:
    await proxy.start()
    return proxy


async def test_socks5_with_credentials_reaches_telegram(telegram: str) -> None:
    proxy = await started(LoopbackProxy("socks5", credentials=("bot", "pa:ss")))
    bot = create_bot(TOKEN, telegram, f"socks5://bot:pa%3Ass@127.0.0.1:{proxy.port}")
    try:
        assert (await bot.get_me()).username == "proxied_bot"
    finally:
        await bot.session.close()
        await proxy.stop()
    port = int(telegram.rsplit(":", 1)[1])
    assert proxy.tunnels and set(proxy.tunnels) == {("127.0.0.1", port)}


async def test_socks5h_leaves_the_host_name_to_the_proxy(telegram: str) -> None:
    proxy = await started(LoopbackProxy("socks5"))
    bot = create_bot(TOKEN, telegram.replace("127.0.0.1", "localhost"), f"socks5h://127.0.0.1:{proxy.port}")
    try:
        assert (await bot.get_me()).username == "proxied_bot"
    finally:
        await bot.session.close()
        await proxy.stop()
    assert {host for host, _ in proxy.tunnels} == {"localhost"}, "the proxy got the name, not an address"


async def test_http_proxy_reaches_telegram(telegram: str) -> None:
    proxy = await started(LoopbackProxy("http"))
    bot = create_bot(TOKEN, telegram, f"http://127.0.0.1:{proxy.port}")
    try:
        assert (await bot.get_me()).username == "proxied_bot"
    finally:
        await bot.session.close()
        await proxy.stop()
    assert proxy.tunnels


async def test_wrong_password_is_a_network_error_naming_the_proxy(telegram: str) -> None:
    proxy = await started(LoopbackProxy("socks5", credentials=("bot", "right")))
    bot = create_bot(TOKEN, telegram, f"socks5://bot:wrong@127.0.0.1:{proxy.port}")
    try:
        with pytest.raises(TelegramNetworkError) as raised:
            await bot.get_me()
    finally:
        await bot.session.close()
        await proxy.stop()
    assert proxy.refused == 1 and not proxy.tunnels
    assert f"the proxy socks5://bot:***@127.0.0.1:{proxy.port} refused" in raised.value.message
    assert "wrong" not in raised.value.message


def test_an_unreachable_proxy_is_one_line_naming_it_and_the_bot_keeps_trying(tmp_path: Path) -> None:
    code, log = run_until_polling(
        tmp_path, BOT_TOKEN="123456:TEST", COMMUNITY_FILE="", TELEGRAM_PROXY="socks5://someone:secret@127.0.0.1:9"
    )
    assert code == 0, log
    assert "Traceback" not in log and "secret" not in log
    warnings = [line for line in log.splitlines() if line.split(" ", 3)[2:3] == ["WARNING"]]
    shown = "socks5://someone:***@127.0.0.1:9"
    assert (
        f"Cannot reach Telegram (api.telegram.org through the proxy {shown}): cannot reach the proxy {shown}"
        in (warnings[0])
    )
    assert "Retrying until it answers" in warnings[0]
