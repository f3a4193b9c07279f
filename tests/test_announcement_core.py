"""Announcements' pure core: validation, stream parameters and their v2 token, inline TwiML,
and the store's bookkeeping of attempts (on SQLite and on PostgreSQL: ``database_url``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.announcements import parameters
from bridge.announcements.options import FIELD_NAMES, AnnouncementOptions
from bridge.announcements.spec import (
    AnnouncementSpec,
    AttemptState,
    CallOutcome,
    normalise_text,
)
from bridge.errors import (
    AnnouncementInvalid,
    NumberNotAllowed,
    SignatureError,
    StoreError,
    TwimlTooLong,
)
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS
from bridge.settings import Settings
from bridge.store import ContactRecord, ContactState, Store
from twiml.announcement import announcement_twiml

KEY = b"0123456789abcdef0123456789abcdef"
SETTINGS = Settings(twilio_phone_number="+15005550006", bridge_public_url="https://b.example.com")


def spec(text: str = "مرحبا", **options: object) -> AnnouncementSpec:
    return AnnouncementSpec.create(
        SETTINGS,
        to="+966501234567",
        text=text,
        options=AnnouncementOptions(**options),  # type: ignore[arg-type]
    )


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"to": "0501234567"}, "to"),
        ({"to": "+0123456789"}, "to"),
        ({"from_": "+1 555"}, "from"),
        ({"text": "   \n\t "}, "text"),
        ({"text": "ا" * (MAX_TEXT_CHARS + 1)}, "text"),
        ({"repeat": 0}, "repeat"),
        ({"repeat": 6}, "repeat"),
        ({"confirm_digit": "12"}, "confirm_digit"),
        ({"confirm_digit": "2"}, "confirm_digit"),  # same as the repeat digit
        ({"repeat_digit": "x"}, "repeat_digit"),
        ({"ring_timeout": 2}, "ring_timeout"),
        ({"speaker": "a\nb"}, "speaker"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"to": "+966501234567", "text": "مرحبا"} | fields
    options = {k: values.pop(k) for k in list(values) if k in FIELD_NAMES}
    with pytest.raises(AnnouncementInvalid) as caught:
        AnnouncementSpec.create(SETTINGS, **values, options=AnnouncementOptions(**options))  # type: ignore[arg-type]
    assert caught.value.field == field
    assert not isinstance(caught.value, NumberNotAllowed)


def test_the_allow_list_refuses_other_countries_and_needs_a_caller_id() -> None:
    guarded = Settings(bridge_allowed_prefixes="+966, +971", twilio_phone_number="+15005550006")
    assert AnnouncementSpec.create(guarded, to="+971501234567", text="x").to == "+971501234567"
    with pytest.raises(NumberNotAllowed) as caught:
        AnnouncementSpec.create(guarded, to="+882123456789", text="x")  # premium satellite
    assert caught.value.field == "to"
    with pytest.raises(AnnouncementInvalid, match="TWILIO_PHONE_NUMBER"):
        AnnouncementSpec.create(Settings(), to="+966501234567", text="x")
    with pytest.raises(ValueError, match="prefix"):
        Settings(bridge_allowed_prefixes="966")


def test_defaults_come_from_the_settings() -> None:
    made = spec("  مرحبا\n\nبك  ")
    assert made.from_ == "+15005550006"
    assert made.text == "مرحبا بك"
    assert made.options.voice == SETTINGS.voice
    assert made.options.ring_seconds == SETTINGS.bridge_ring_timeout
    assert made.time_limit(3) > 60


@given(st.text(max_size=300))
def test_normalised_text_is_stable_and_single_spaced(text: str) -> None:
    once = normalise_text(text)
    assert normalise_text(once) == once
    assert "  " not in once
    assert not any(ch in once for ch in "\n\r\t\x00")


# --- stream parameters and the v2 token -----------------------------------------------------------

texts = (
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=2000
    )
    .map(normalise_text)
    .filter(bool)
)


@settings(max_examples=60, deadline=None)
@given(texts, st.integers(1, 5), st.sampled_from([None, "1", "#"]), st.booleans())
def test_parameters_round_trip_within_twilios_limits(
    text: str, repeat: int, confirm: str | None, amd: bool
) -> None:
    made = spec(text, repeat=repeat, confirm_digit=confirm, machine_detection=amd)
    params = parameters.encode("an_1", made)
    for name, value in params.items():
        assert value, f"empty value for {name}: Twilio may drop it"
        assert len((name + value).encode("utf-16-le")) // 2 < parameters.MAX_PARAMETER_CHARS
    params["token"] = parameters.sign(KEY, params, now=1000, ttl=60)
    assert parameters.verify(KEY, params, now=1059, call_sid="CA1") == 1060
    decoded = parameters.decode(params)
    assert decoded.text == made.text
    assert (decoded.repeat, decoded.confirm_digit, decoded.machine_detection) == (
        repeat,
        confirm,
        amd,
    )
    assert decoded.voice == made.options.voice


def test_any_altered_added_or_removed_parameter_breaks_the_token() -> None:
    params = parameters.encode("an_1", spec("موعدك غدا", confirm_digit="1"))
    params["token"] = parameters.sign(KEY, params, now=1000, ttl=60)
    for name in [n for n in params if n != "token"]:
        altered = dict(params, **{name: params[name] + "x"})
        with pytest.raises(SignatureError, match="altered"):
            parameters.verify(KEY, altered, now=1000, call_sid="CA1")
        removed = {k: v for k, v in params.items() if k != name}
        with pytest.raises(SignatureError):
            parameters.verify(KEY, removed, now=1000, call_sid="CA1")
    with pytest.raises(SignatureError):
        parameters.verify(KEY, dict(params, extra="1"), now=1000, call_sid="CA1")
    with pytest.raises(SignatureError, match="expired"):
        parameters.verify(KEY, params, now=1061, call_sid="CA1")
    with pytest.raises(SignatureError):
        parameters.verify(b"another key", params, now=1000, call_sid="CA1")
    with pytest.raises(SignatureError, match="malformed"):
        parameters.verify(KEY, dict(params, token="v1.1.2.3"), now=1000, call_sid="CA1")


def test_the_twiml_connects_the_stream_then_hangs_up_and_stays_under_4000() -> None:
    params = parameters.encode("an_1", spec("ا" * 2000))
    document = announcement_twiml("wss://b.example.com/twilio/stream", params)
    assert document.startswith("<Response><Connect><Stream")
    assert document.endswith("</Connect><Hangup /></Response>")
    assert len(document) < 4000
    markup = parameters.encode("an_1", spec('&"<>' * 500))  # every character escaped
    with pytest.raises(TwimlTooLong, match="4000"):
        announcement_twiml("wss://b.example.com/twilio/stream", markup)


# --- the store ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_store_attempt_lifecycle_and_out_of_order_callbacks(database_url: str) -> None:
    async with await Store.open(database_url) as store:
        record, created = await store.create_announcement(spec(), now=1.0, idempotency_key="k")
        again, created_again = await store.create_announcement(spec(), now=2.0, idempotency_key="k")
        assert (created, created_again, again.id) == (True, False, record.id)
        assert record.state is AttemptState.PLANNED
        # A callback can arrive before mark_placed: it proves the call exists.
        early = await store.record_status(record.id, "ringing", now=3.0, seq=1, call_sid="CA1")
        assert early is not None
        assert early.state is AttemptState.PLACED
        placed = await store.mark_placed(record.id, "CA1", now=3.1)
        assert (placed.call_sid, placed.status) == ("CA1", "ringing")
        stale = await store.record_status(record.id, "initiated", now=3.2, seq=0)
        assert stale is not None
        assert stale.status == "ringing"
        done = await store.record_status(
            record.id, "completed", now=9.0, seq=3, duration=6, answered_by="human"
        )
        assert done is not None
        assert (done.state, done.duration) == (AttemptState.ENDED, 6)
        # answered, but no bridge recorded its stream (yet): nobody heard anything
        assert (done.outcome, done.reason) == (CallOutcome.FAILED, "stream-never-connected")
        late = await store.record_status(record.id, "in-progress", now=9.5, seq=2)
        assert late is not None
        assert late.status == "completed"
        assert await store.record_status("an_unknown", "completed", now=1) is None
        await store.record_stream(record.id, now=4.0, started=True)
        await store.record_stream(record.id, now=8.0, ended=True, plays=2, confirmation="confirmed")
        final = await store.get_announcement(record.id)
        assert final is not None
        assert (final.plays, final.confirmation) == (2, "confirmed")
        assert final.to_json()["outcome"] == CallOutcome.HEARD
        assert (final.to_json()["reason"], final.to_json()["error"]) == (None, None)
        assert await store.call_sids() == {"CA1"}


@pytest.mark.anyio
async def test_store_campaign_attempts_and_leases(database_url: str) -> None:
    url = database_url
    async with await Store.open(url) as store:
        contacts = [ContactRecord("", i, f"+96650000000{i}", {"i": str(i)}, "t") for i in range(3)]
        campaign = await store.create_campaign("night", {"cps": 1}, contacts, now=1.0)
        first = await store.plan_attempt(campaign.id, 1, spec(), now=2.0)
        second = await store.plan_attempt(campaign.id, 1, spec(), now=3.0)
        assert (first.attempt, second.attempt) == (1, 2)
        assert (await store.contacts(campaign.id))[1].state is ContactState.ACTIVE
        await store.mark_not_placed(second.id, "no call", now=4.0)
        assert [a.state for a in await store.attempts(campaign.id)] == [
            AttemptState.PLANNED,
            AttemptState.NOT_PLACED,
        ]
        assert [a.id for a in await store.unfinished_announcements(campaign_id=campaign.id)] == [
            first.id
        ]
        assert await store.recent_attempt_times(2.5) == [3.0]
        held = await store.acquire_lease(campaign.id, "a", now=10.0, ttl=5.0)
        assert held.lease_owner == "a"
        assert (await store.acquire_lease(campaign.id, "b", now=14.0, ttl=5.0)).lease_owner == "a"
        assert (await store.acquire_lease(campaign.id, "b", now=15.5, ttl=5.0)).lease_owner == "b"
        assert (await store.find_campaign("night")).id == campaign.id  # type: ignore[union-attr]
        assert (await store.find_campaign(None)).id == campaign.id  # type: ignore[union-attr]
    # a second process sees the same state
    async with await Store.open(url) as other:
        assert (await other.get_campaign(campaign.id)).counts == {  # type: ignore[union-attr]
            "pending": 2,
            "active": 1,
        }


@pytest.mark.anyio
async def test_store_refuses_what_it_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="cannot open"):
        await Store.open(f"sqlite:///{tmp_path}/dir.db")
    (tmp_path / "db").mkdir()  # a missing directory is created
    async with await Store.open(f"sqlite:///{tmp_path}/db/sub/bridge.db") as store:
        assert await store.list_campaigns() == []
    assert (tmp_path / "db" / "sub" / "bridge.db").is_file()


@pytest.mark.anyio
async def test_a_call_sid_overrides_a_reconciliation_that_raced_the_creation(
    database_url: str,
) -> None:
    async with await Store.open(database_url) as store:
        record, _ = await store.create_announcement(spec(), now=1.0)
        gone = await store.mark_not_placed(record.id, "no call found", now=2.0)
        assert gone.state is AttemptState.NOT_PLACED
        placed = await store.mark_placed(record.id, "CA9", now=2.1)
        assert (placed.state, placed.call_sid, placed.error, placed.ended_at) == (
            AttemptState.PLACED,
            "CA9",
            None,
            None,
        )
