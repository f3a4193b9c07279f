"""The sans-I/O Twilio REST core: strings and values in, shapes and decisions out (no I/O)."""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.rest_model import (
    AccountInfo,
    CallEvent,
    CallInfo,
    CallStatus,
    CallUpdate,
    Direction,
    Form,
    IncomingNumber,
    UpdateAction,
)
from bridge.errors import InvalidState

AC = "AC" + "a" * 32
CA = "CA" + "b" * 32
PN = "PN" + "c" * 32
T0 = datetime(2010, 8, 31, 20, 36, 28, tzinfo=UTC)

# Every property of the spec's schemas (twilio_api_v2010.json, components.schemas).
CALL_PROPERTIES = {
    "sid", "date_created", "date_updated", "parent_call_sid", "account_sid", "to",
    "to_formatted", "from", "from_formatted", "phone_number_sid", "status", "start_time",
    "end_time", "duration", "price", "price_unit", "direction", "answered_by", "api_version",
    "forwarded_from", "group_sid", "caller_name", "queue_time", "trunk_sid", "uri",
    "subresource_uris",
}  # fmt: skip
ACCOUNT_PROPERTIES = {
    "auth_token", "date_created", "date_updated", "friendly_name", "owner_account_sid", "sid",
    "status", "subresource_uris", "type", "uri",
}  # fmt: skip
NUMBER_PROPERTIES = {
    "account_sid", "address_sid", "address_requirements", "api_version", "beta", "capabilities",
    "date_created", "date_updated", "friendly_name", "identity_sid", "phone_number", "origin",
    "sid", "sms_application_sid", "sms_fallback_method", "sms_fallback_url", "sms_method",
    "sms_url", "status_callback", "status_callback_method", "trunk_sid", "uri",
    "voice_receive_mode", "voice_application_sid", "voice_caller_id_lookup",
    "voice_fallback_method", "voice_fallback_url", "voice_method", "voice_url",
    "emergency_status", "emergency_address_sid", "emergency_address_status", "bundle_sid",
    "status", "type",
}  # fmt: skip
PAGE_META = {
    "end", "first_page_uri", "next_page_uri", "page", "page_size", "previous_page_uri", "start",
    "uri",
}  # fmt: skip


def call_info(**overrides: object) -> CallInfo:
    values: dict[str, object] = {
        "sid": CA,
        "account_sid": AC,
        "to": "+14158675309",
        "from_": "+966500000001",
        "direction": Direction.OUTBOUND_API,
        "status": CallStatus.QUEUED,
        "date_created": T0,
        "date_updated": T0,
    }
    values.update(overrides)
    return CallInfo(**values)  # type: ignore[arg-type]


def number(**overrides: object) -> IncomingNumber:
    values: dict[str, object] = {
        "sid": PN,
        "account_sid": AC,
        "phone_number": "+15005550006",
        "friendly_name": "(500) 555-0006",
        "date_created": T0,
        "date_updated": T0,
        "voice_url": "https://bridge.example.com/twiml/inbound",
        "status_callback": "https://bridge.example.com/twilio/status",
    }
    values.update(overrides)
    return IncomingNumber(**values)  # type: ignore[arg-type]


# --- values ---------------------------------------------------------------------------------------


def test_exports_exist() -> None:
    missing = [name for name in rest.__all__ if not hasattr(rest, name)]
    assert missing == []


def test_rfc2822_is_twilios_date_format() -> None:
    assert rest.rfc2822(T0) == "Tue, 31 Aug 2010 20:36:28 +0000"
    riyadh = timezone(timedelta(hours=3))
    assert rest.rfc2822(T0.astimezone(riyadh)) == "Tue, 31 Aug 2010 20:36:28 +0000"
    assert rest.rfc2822(T0.replace(microsecond=999_999)) == "Tue, 31 Aug 2010 20:36:28 +0000"
    with pytest.raises(ValueError, match="aware"):
        rest.rfc2822(datetime(2010, 8, 31, 20, 36, 28))  # noqa: DTZ001


def test_sids_are_prefix_and_32_hex_and_reproducible() -> None:
    first = rest.make_sid("CA", random.Random(7))
    assert first == rest.make_sid("CA", random.Random(7))
    assert rest.is_sid(first, "CA")
    assert len(first) == 34
    assert rest.is_sid("CA" + "F" * 32, "CA")  # the spec's pattern allows upper-case hex
    assert not rest.is_sid(first, "PN")
    assert not rest.is_sid("CA" + "g" * 32, "CA")
    assert not rest.is_sid("CA" + "a" * 31, "CA")
    with pytest.raises(ValueError):
        rest.make_sid("ca", random.Random(0))


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("+14158675309", True),
        ("+966500000001", True),
        ("+1234567", True),
        ("+123456789012345", True),
        ("+1234567890123456", False),
        ("+123456", False),
        ("14158675309", False),
        ("+04158675309", False),
        ("+1 415 867 5309", False),
        ("", False),
    ],
)
def test_e164(value: str, ok: bool) -> None:
    assert rest.is_e164(value) is ok


def test_formatted_numbers_like_twilio() -> None:
    assert rest.format_number("+14158675309") == "(415) 867-5309"
    assert rest.format_number("+966500000001") == "+966500000001"
    assert rest.format_number("client:alice") == "client:alice"


def test_methods() -> None:
    assert rest.parse_method(None) == "POST"
    assert rest.parse_method("") == "POST"
    assert rest.parse_method("get") == "GET"
    assert rest.parse_method("DELETE") is None


# --- forms and auth -------------------------------------------------------------------------------


def test_form_keeps_repeated_keys() -> None:
    form = Form.parse(
        b"To=%2B14158675309&StatusCallbackEvent=initiated&StatusCallbackEvent=completed&Empty="
    )
    assert form.get("To") == "+14158675309"
    assert form.getall("StatusCallbackEvent") == ["initiated", "completed"]
    assert form.get("StatusCallbackEvent") == "initiated"
    assert form.get("Empty") == ""
    assert "Empty" in form
    assert "Missing" not in form
    assert form.get("Missing", "x") == "x"
    assert form.to_dict() == {
        "To": "+14158675309",
        "StatusCallbackEvent": ["initiated", "completed"],
        "Empty": "",
    }
    assert Form.parse(form.encode()) == form


def test_form_from_mapping_and_limits() -> None:
    form = Form.of({"A": "1", "B": ["x", "y"]})
    assert form.pairs == (("A", "1"), ("B", "x"), ("B", "y"))
    assert Form.of([("A", "1")]).to_dict() == {"A": "1"}
    assert Form.parse("plus=%2B1+2").get("plus") == "+1 2"
    with pytest.raises(ValueError):
        Form.parse("&".join(f"k{i}=v" for i in range(rest.MAX_FORM_FIELDS + 1)))


def test_basic_auth() -> None:
    header = rest.basic_auth_header(AC, "tok:en")
    assert rest.parse_basic_auth(header) == (AC, "tok:en")
    assert rest.parse_basic_auth(header.replace("Basic", "basic")) == (AC, "tok:en")
    assert rest.parse_basic_auth(None) is None
    assert rest.parse_basic_auth("") is None
    assert rest.parse_basic_auth("Bearer abc") is None
    assert rest.parse_basic_auth("Basic !!!") is None
    assert rest.parse_basic_auth("Basic " + "bm9jb2xvbg==") is None  # "nocolon"
    assert rest.parse_basic_auth("Basic") is None


# --- errors ---------------------------------------------------------------------------------------


def test_error_bodies() -> None:
    path = f"/2010-04-01/Accounts/{AC}/Calls/{CA}.json"
    assert rest.not_found(path).body() == {
        "code": 20404,
        "message": f"The requested resource {path} was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }
    assert rest.authenticate().body() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert rest.call_not_in_progress().body() == {
        "code": 21220,
        "message": "Call is not in-progress. Cannot redirect.",
        "more_info": "https://www.twilio.com/docs/errors/21220",
        "status": 400,
    }
    assert (rest.missing_to().code, rest.missing_to().message) == (
        21201,
        "No 'To' number is specified",
    )
    assert (rest.missing_url().code, rest.missing_url().message) == (
        21205,
        "Url parameter is required.",
    )
    assert (rest.missing_from().code, rest.missing_from().status) == (21213, 400)
    assert rest.twiml_too_long().code == 32018
    assert rest.method_not_allowed("DELETE").status == 405


def test_paging() -> None:
    assert rest.parse_paging(Form()) == (0, 50)
    assert rest.parse_paging(Form.of({"Page": "2", "PageSize": "1000"})) == (2, 1000)
    for bad in ({"PageSize": "0"}, {"PageSize": "1001"}, {"Page": "-1"}, {"PageSize": "x"}):
        error = rest.parse_paging(Form.of(bad))
        assert isinstance(error, rest.ApiError)
        assert error.status == 400


# --- call status ----------------------------------------------------------------------------------


def test_status_lifecycle() -> None:
    assert rest.next_status(CallStatus.QUEUED, CallStatus.RINGING) is CallStatus.RINGING
    assert rest.next_status(CallStatus.RINGING, CallStatus.IN_PROGRESS) is CallStatus.IN_PROGRESS
    assert rest.next_status(CallStatus.IN_PROGRESS, CallStatus.COMPLETED) is CallStatus.COMPLETED
    for final in ("busy", "no-answer", "failed", "canceled"):
        assert rest.next_status(CallStatus.RINGING, CallStatus(final)).is_final
    for final in ("busy", "failed", "canceled"):
        assert rest.next_status(CallStatus.QUEUED, CallStatus(final)).is_final
    assert {s for s in CallStatus if s.is_live} == {
        CallStatus.QUEUED,
        CallStatus.RINGING,
        CallStatus.IN_PROGRESS,
    }


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (CallStatus.QUEUED, CallStatus.IN_PROGRESS),
        (CallStatus.QUEUED, CallStatus.COMPLETED),
        (CallStatus.QUEUED, CallStatus.NO_ANSWER),
        (CallStatus.IN_PROGRESS, CallStatus.CANCELED),
        (CallStatus.IN_PROGRESS, CallStatus.RINGING),
        (CallStatus.COMPLETED, CallStatus.COMPLETED),
        (CallStatus.BUSY, CallStatus.RINGING),
        (CallStatus.CANCELED, CallStatus.IN_PROGRESS),
    ],
)
def test_forbidden_transitions_are_bugs(current: CallStatus, new: CallStatus) -> None:
    with pytest.raises(InvalidState):
        rest.next_status(current, new)


def test_call_times_and_duration() -> None:
    call = call_info()
    ringing = call.moved_to(CallStatus.RINGING, T0 + timedelta(seconds=1))
    assert ringing.start_time == T0 + timedelta(seconds=1)
    answered = ringing.moved_to(CallStatus.IN_PROGRESS, T0 + timedelta(seconds=3))
    assert answered.answered_at == T0 + timedelta(seconds=3)
    assert answered.start_time == ringing.start_time
    assert answered.duration is None
    done = answered.moved_to(CallStatus.COMPLETED, T0 + timedelta(seconds=15.7))
    assert done.end_time == T0 + timedelta(seconds=15.7)
    assert done.duration == 12
    busy = ringing.moved_to(CallStatus.BUSY, T0 + timedelta(seconds=2))
    assert (busy.duration, busy.end_time) == (None, None)


def test_callback_status() -> None:
    assert rest.callback_status(CallEvent.INITIATED, CallStatus.QUEUED) == "initiated"
    assert rest.callback_status(CallEvent.RINGING, CallStatus.RINGING) == "ringing"
    assert rest.callback_status(CallEvent.ANSWERED, CallStatus.IN_PROGRESS) == "in-progress"
    assert rest.callback_status(CallEvent.COMPLETED, CallStatus.NO_ANSWER) == "no-answer"


# --- resources ------------------------------------------------------------------------------------


def test_call_resource_has_every_spec_property() -> None:
    info = (
        call_info(answered_by="human", phone_number_sid=PN)
        .moved_to(CallStatus.RINGING, T0)
        .moved_to(CallStatus.IN_PROGRESS, T0 + timedelta(seconds=2))
        .moved_to(CallStatus.COMPLETED, T0 + timedelta(seconds=17))
    )
    resource = rest.call_resource(info)
    assert set(resource) == CALL_PROPERTIES
    assert resource["from"] == "+966500000001"
    assert resource["to_formatted"] == "(415) 867-5309"
    assert resource["status"] == "completed"
    assert resource["duration"] == "15"
    assert resource["direction"] == "outbound-api"
    assert resource["end_time"] == "Tue, 31 Aug 2010 20:36:45 +0000"
    assert resource["uri"] == f"/2010-04-01/Accounts/{AC}/Calls/{CA}.json"
    subresources = resource["subresource_uris"]
    assert subresources is not None
    assert subresources["streams"] == f"/2010-04-01/Accounts/{AC}/Calls/{CA}/Streams.json"
    # SID-typed fields: null or matching their pattern, never "".
    assert resource["trunk_sid"] is None
    assert resource["group_sid"] is None
    fresh = rest.call_resource(call_info())
    assert (fresh["status"], fresh["duration"], fresh["start_time"]) == ("queued", None, None)


def test_account_resource() -> None:
    account = AccountInfo(
        sid=AC, auth_token="tok", friendly_name="Test", date_created=T0, date_updated=T0
    )
    resource = rest.account_resource(account)
    assert set(resource) == ACCOUNT_PROPERTIES
    assert resource["uri"] == f"/2010-04-01/Accounts/{AC}.json"
    assert resource["owner_account_sid"] == AC
    assert (resource["status"], resource["type"]) == ("active", "Full")
    subresources = resource["subresource_uris"]
    assert subresources is not None
    assert subresources["calls"] == f"/2010-04-01/Accounts/{AC}/Calls.json"
    assert subresources["short_codes"] == f"/2010-04-01/Accounts/{AC}/SMS/ShortCodes.json"
    assert email.utils.parsedate_to_datetime(str(resource["date_created"])) == T0


def test_number_resource() -> None:
    resource = rest.incoming_phone_number_resource(number())
    assert set(resource) == NUMBER_PROPERTIES
    assert resource["uri"] == f"/2010-04-01/Accounts/{AC}/IncomingPhoneNumbers/{PN}.json"
    assert resource["capabilities"] == {"voice": True, "sms": True, "mms": True, "fax": False}
    assert resource["voice_method"] == "POST"
    assert resource["sms_url"] is None


def test_number_update_changes_only_what_is_sent() -> None:
    before = number()
    later = T0 + timedelta(minutes=5)
    after = rest.update_number(
        before, Form.of({"VoiceUrl": "https://new.example.com/voice", "Unknown": "x"}), later
    )
    assert isinstance(after, IncomingNumber)
    old, new = (
        rest.incoming_phone_number_resource(before),
        rest.incoming_phone_number_resource(after),
    )
    changed = {key for key in NUMBER_PROPERTIES if old[key] != new[key]}  # type: ignore[literal-required]
    assert changed == {"voice_url", "date_updated"}
    assert new["voice_url"] == "https://new.example.com/voice"
    assert rest.update_number(before, Form(), later) is before

    cleared = rest.update_number(
        before,
        Form.of({"StatusCallback": "", "VoiceMethod": "get", "VoiceCallerIdLookup": "true"}),
        later,
    )
    assert isinstance(cleared, IncomingNumber)
    assert cleared.status_callback is None
    assert cleared.voice_method == "GET"
    assert cleared.voice_caller_id_lookup is True
    for bad in (
        {"VoiceMethod": "PUT"},
        {"VoiceUrl": "not a url"},
        {"VoiceCallerIdLookup": "maybe"},
        {"TrunkSid": "TK123"},
        {"VoiceReceiveMode": "sms"},
    ):
        error = rest.update_number(before, Form.of(bad), later)
        assert isinstance(error, rest.ApiError)
        assert (error.status, error.code) == (400, 20001)


def test_list_pages() -> None:
    records = [{"sid": f"CA{i:032x}", "n": i} for i in range(5)]
    path = f"/2010-04-01/Accounts/{AC}/Calls.json"
    first = rest.list_page(
        "calls", records, path=path, filters=[("To", "+14158675309")], page=0, page_size=2
    )
    assert set(first) == PAGE_META | {"calls"}
    assert [r["n"] for r in first["calls"]] == [0, 1]
    assert (first["start"], first["end"], first["page"], first["page_size"]) == (0, 1, 0, 2)
    assert first["uri"] == f"{path}?To=%2B14158675309&PageSize=2&Page=0"
    assert first["first_page_uri"] == first["uri"]
    assert first["previous_page_uri"] is None
    assert first["next_page_uri"] == (
        f"{path}?To=%2B14158675309&PageSize=2&Page=1&PageToken=PA{records[1]['sid']}"
    )
    last = rest.list_page("calls", records, path=path, filters=[], page=2, page_size=2)
    assert [r["n"] for r in last["calls"]] == [4]
    assert (last["start"], last["end"], last["next_page_uri"]) == (4, 4, None)
    assert last["previous_page_uri"].startswith(f"{path}?PageSize=2&Page=1&PageToken=PB")
    empty = rest.list_page("calls", [], path=path, filters=[], page=0, page_size=50)
    assert (empty["calls"], empty["start"], empty["end"], empty["next_page_uri"]) == (
        [],
        0,
        0,
        None,
    )


# --- call requests --------------------------------------------------------------------------------

CALLER_IDS = ["+15005550006"]


def create(**fields: str | list[str]) -> rest.CallRequest | rest.ApiError:
    return rest.parse_call_create(Form.of(fields), CALLER_IDS)


def code_of(result: object) -> int | None:
    return result.code if isinstance(result, rest.ApiError) else None


def test_create_checks_to_then_url_then_from() -> None:
    assert code_of(create()) == 21201
    assert code_of(create(From="+15005550006", Url="https://a.example/x")) == 21201
    assert code_of(create(To="+14158675309")) == 21205
    assert code_of(create(To="+14158675309", ApplicationSid="AP" + "0" * 32)) == 21218
    assert code_of(create(To="+14158675309", Twiml="<Response/>")) == 21213
    assert code_of(create(To="415", From="+15005550006", Twiml="<Response/>")) == 21211
    assert code_of(create(To="+14158675309", From="+19995550000", Twiml="<Response/>")) == 21210
    assert code_of(create(To="+14158675309", From="+15005550006", Url="ftp://x")) == 21205
    long = "<Response>" + "<Pause/>" * 600 + "</Response>"
    assert code_of(create(To="+14158675309", From="+15005550006", Twiml=long)) == 32018
    # Twiml is ignored when Url is given (so its length does not matter).
    both = create(To="+14158675309", From="+15005550006", Twiml=long, Url="https://a.example/x")
    assert isinstance(both, rest.CallRequest)
    assert both.twiml is None
    anyone = rest.parse_call_create(
        Form.of({"To": "sip:bob@example.com", "From": "+19995550000", "Twiml": "<Response/>"}), None
    )
    assert isinstance(anyone, rest.CallRequest)


def test_create_defaults_and_options() -> None:
    plain = create(To="+14158675309", From="+15005550006", Twiml="<Response/>")
    assert isinstance(plain, rest.CallRequest)
    assert plain.status_callback_events == {CallEvent.COMPLETED}
    assert (plain.method, plain.timeout, plain.time_limit) == ("POST", 60, 4 * 3600)
    assert plain.machine_detection is None
    full = create(
        To="+14158675309",
        From="+15005550006",
        Url="https://a.example/voice",
        Method="GET",
        StatusCallback="https://a.example/status",
        StatusCallbackEvent=["initiated", "ringing answered", "completed"],
        StatusCallbackMethod="get",
        Timeout="900",
        TimeLimit="30",
        MachineDetection="DetectMessageEnd",
    )
    assert isinstance(full, rest.CallRequest)
    assert full.status_callback_events == set(CallEvent)
    assert (full.method, full.status_callback_method) == ("GET", "GET")
    assert (full.timeout, full.time_limit) == (600, 30)
    assert full.machine_detection == "DetectMessageEnd"
    base = {"To": "+14158675309", "From": "+15005550006", "Twiml": "<Response/>"}
    for bad in (
        {"StatusCallbackEvent": "hungup"},
        {"Method": "PUT"},
        {"Timeout": "soon"},
        {"Timeout": "0"},
        {"MachineDetection": "Yes"},
        {"StatusCallback": "/relative"},
    ):
        assert code_of(rest.parse_call_create(Form.of(base | bad), CALLER_IDS)) == 20001


def test_update_parsing() -> None:
    assert code_of(rest.parse_call_update(CallStatus.COMPLETED, Form())) == 21220
    assert code_of(rest.parse_call_update(CallStatus.NO_ANSWER, Form.of({"Twiml": "x"}))) == 21220
    assert (
        code_of(rest.parse_call_update(CallStatus.IN_PROGRESS, Form.of({"Status": "x"}))) == 20001
    )
    long = Form.of({"Twiml": "x" * 4001})
    assert code_of(rest.parse_call_update(CallStatus.IN_PROGRESS, long)) == 32018
    update = rest.parse_call_update(
        CallStatus.IN_PROGRESS,
        Form.of({"Url": "https://a.example/next", "Twiml": "<Response/>", "Method": "GET"}),
    )
    assert update == CallUpdate(url="https://a.example/next", method="GET")
    assert update.redirects


@pytest.mark.parametrize(
    ("current", "update", "action"),
    [
        (CallStatus.IN_PROGRESS, CallUpdate(status=CallStatus.COMPLETED), UpdateAction.HANG_UP),
        (CallStatus.RINGING, CallUpdate(status=CallStatus.COMPLETED), UpdateAction.CANCEL),
        (CallStatus.QUEUED, CallUpdate(status=CallStatus.CANCELED), UpdateAction.CANCEL),
        (CallStatus.IN_PROGRESS, CallUpdate(status=CallStatus.CANCELED), UpdateAction.NONE),
        (CallStatus.IN_PROGRESS, CallUpdate(twiml="<Response/>"), UpdateAction.REDIRECT),
        (CallStatus.RINGING, CallUpdate(url="https://a.example/x"), UpdateAction.REDIRECT),
        (
            CallStatus.IN_PROGRESS,
            CallUpdate(status_callback="https://a.example"),
            UpdateAction.NONE,
        ),
    ],
)
def test_update_actions(current: CallStatus, update: CallUpdate, action: UpdateAction) -> None:
    assert rest.update_action(current, update) is action
