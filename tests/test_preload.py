"""Custom-voice preload at startup, against the Hamsa emulator over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from bench._common import serve_env, start_serve
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorServer
from bridge.dev.loopback import loopback
from bridge.errors import PreloadError
from bridge.preload import preload_voices
from bridge.settings import Settings
from tests.log_audit import record_output
from tests.timing import HANG

pytestmark = pytest.mark.anyio

VOICE_A = "c803658e-ccec-47e7-ad0f-1caf9ba4babb"
VOICE_B = "0b5e6b0e-5b7a-4a4e-9a55-3d6f7c1f2e01"
UNKNOWN = "7d2f9c4e-1111-4222-8333-944455556666"
KEY = "preload-key"


def settings_for(server: EmulatorServer, *voices: str, key: str = KEY) -> Settings:
    return Settings(hamsa_api_url=server.http_url, hamsa_api_key=key, hamsa_preload_voices=voices)


async def test_each_voice_is_preloaded_once_with_token_auth() -> None:
    config = EmulatorConfig(api_keys=frozenset({KEY}), custom_voices=frozenset({VOICE_A, VOICE_B}))
    async with EmulatorServer(config) as server:
        await preload_voices(settings_for(server, VOICE_A, VOICE_B))
        records = list(server.state.preloads)
    assert [(r.voice_id, r.auth, r.status) for r in records] == [
        (VOICE_A, "token", 200),
        (VOICE_B, "token", 200),
    ]


@pytest.mark.parametrize(
    ("voice", "key", "config_extra", "status", "hint"),
    [
        (UNKNOWN, KEY, {}, 404, "does not know this voice"),
        ("not-a-uuid", KEY, {}, 400, "malformed"),
        (VOICE_A, "wrong-key", {}, 401, "HAMSA_API_KEY"),
        (VOICE_A, KEY, {"preload_failures": frozenset({VOICE_A})}, 500, "try again later"),
    ],
)
async def test_failures_name_the_voice_and_what_to_check(
    voice: str, key: str, config_extra: dict[str, object], status: int, hint: str
) -> None:
    config = EmulatorConfig(
        api_keys=frozenset({KEY}),
        custom_voices=frozenset({VOICE_A}),
        **config_extra,  # type: ignore[arg-type]
    )
    async with EmulatorServer(config) as server:
        with pytest.raises(PreloadError) as info:
            await preload_voices(settings_for(server, voice, key=key))
    assert info.value.voice_id == voice
    assert info.value.status == status
    assert voice in str(info.value)
    assert hint in str(info.value)


async def test_unreachable_hamsa_is_a_clear_error() -> None:
    settings = Settings(
        hamsa_api_url="http://127.0.0.1:9", hamsa_api_key=KEY, hamsa_preload_voices=(VOICE_A,)
    )
    with pytest.raises(PreloadError, match=VOICE_A):
        await preload_voices(settings)


async def test_bridge_is_ready_only_after_preload_and_it_happens_before_any_call() -> None:
    emulator = EmulatorConfig(custom_voices=frozenset({VOICE_A}))
    async with loopback(
        emulator, hamsa_preload_voices=(VOICE_A,), bridge_greeting="مرحبا بك."
    ) as rig:
        assert rig.bridge.ready
        await rig.call()
        preloads = list(rig.hamsa.preloads)
        first_connection = rig.hamsa.connections[0].opened_at
    assert [(p.voice_id, p.status) for p in preloads] == [(VOICE_A, 200)]
    assert preloads[0].at < first_connection


async def test_serve_refuses_to_start_on_an_unknown_voice_and_names_it() -> None:
    config = EmulatorConfig(api_keys=frozenset({KEY}), custom_voices=frozenset({VOICE_A}))
    async with EmulatorServer(config) as server:
        env = serve_env(
            server.http_url,
            hamsa_key=KEY,
            auth_token="t",
            public_url="https://bridge.example.com",
            HAMSA_PRELOAD_VOICES=f"{VOICE_A},{UNKNOWN}",
        )
        process = await start_serve(
            0, env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        async with asyncio.timeout(HANG):
            output, _ = await process.communicate()
    text = output.decode()
    record_output(text)
    assert process.returncode == 1, text  # a runtime failure: Hamsa refused the voice
    assert UNKNOWN in text
    assert "does not know this voice" in text
    assert KEY not in text


def test_a_cloned_voice_as_default_speaker_is_preloaded_too() -> None:
    from bridge.preload import voices_to_preload

    settings = Settings(hamsa_speaker=VOICE_B, hamsa_preload_voices=(VOICE_A, VOICE_A))
    assert voices_to_preload(settings) == [VOICE_A, VOICE_B]
    assert voices_to_preload(Settings(hamsa_speaker="Majd")) == []
