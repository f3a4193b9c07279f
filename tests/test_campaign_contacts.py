"""A campaign's CSV and text: loading, every problem with its line, templates, duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.announcements.options import AnnouncementOptions
from bridge.campaigns.config import CampaignConfig
from bridge.campaigns.contacts import (
    DUPLICATE,
    ContactFile,
    Prepared,
    load_contacts,
    normalise_number,
    prepare_contacts,
)
from bridge.campaigns.template import Template
from bridge.errors import AnnouncementInvalid, CampaignInvalid
from bridge.settings import Settings
from bridge.store import ContactState

SETTINGS = Settings(
    bridge_public_url="https://bridge.example.com",
    twilio_auth_token="token",
    twilio_phone_number="+966110000000",
    bridge_allowed_prefixes=("+966",),
)


def write(tmp_path: Path, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / "numbers.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def prepare(file: ContactFile, text: str, **options: object) -> Prepared:
    config = CampaignConfig(
        text=text,
        from_="+966110000000",
        options=AnnouncementOptions("Majd", "ksa", "ar", **options),  # type: ignore[arg-type]
    )
    return prepare_contacts(
        file,
        Template.parse(text),
        lambda number, body: config.spec(SETTINGS, number, body),
        SETTINGS,
        now=1_800_000_000.0,
    )


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("column", ["number", "Phone", "PHONE_NUMBER", "to"])
def test_the_number_column_has_four_names_in_any_case_and_a_bom_is_ignored(
    tmp_path: Path, bom: bool, column: str
) -> None:
    file = load_contacts(write(tmp_path, f"name,{column}\nأحمد,+966501234567\n", bom=bom))
    assert file.number_column == column
    assert file.variable_names == ("name",)
    (row,) = file.rows
    assert (row.line, row.number, row.variables) == (2, "+966501234567", {"name": "أحمد"})


def test_timezone_column_is_not_a_variable_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "number,TimeZone,name,date\n+966501234567,Asia/Riyadh,Ali,Sunday\n\n,,,\n"
        '+966501234568,,"Sara, Dr",Monday\n',
    )
    file = load_contacts(path)
    assert file.variable_names == ("name", "date")
    assert [(r.line, r.timezone, r.variables["name"]) for r in file.rows] == [
        (2, "Asia/Riyadh", "Ali"),
        (5, "", "Sara, Dr"),
    ]


def test_a_file_without_a_number_column_names_the_accepted_names(tmp_path: Path) -> None:
    with pytest.raises(CampaignInvalid) as caught:
        load_contacts(write(tmp_path, "name,mobile\nAli,+966501234567\n"))
    message = caught.value.message
    assert "number, phone, phone_number, to" in message
    assert "name, mobile" in message


def test_two_number_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CampaignInvalid, match="several number columns"):
        load_contacts(write(tmp_path, "phone,number\n+966501234567,+966501234568\n"))


def test_rows_with_too_many_fields_are_all_reported_with_their_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "number,name\n+966501234567,Ali\n+966501234568,Sara,extra\n+966501234569,A,B,C\n",
    )
    with pytest.raises(CampaignInvalid) as caught:
        load_contacts(path)
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 3", "line 4"]


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "numbers.csv"
    path.write_bytes(b"number,name\n+966501234567,Ali\n+966501234568,\xe9\xe9\n")
    with pytest.raises(CampaignInvalid, match="line 3 is not UTF-8"):
        load_contacts(path)


def test_empty_and_header_only_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CampaignInvalid, match="empty"):
        load_contacts(write(tmp_path, ""))
    with pytest.raises(CampaignInvalid, match="no numbers"):
        load_contacts(write(tmp_path, "number,name\n"))


def test_numbers_lose_their_separators_but_nothing_is_guessed() -> None:
    assert normalise_number("+966 50-123.4567") == "+966501234567"
    assert normalise_number("(+966) 50 123 4567") == "+966501234567"
    assert normalise_number("0501234567") == "0501234567"


# --- templates -------------------------------------------------------------------------------


def test_template_variables_and_literal_braces() -> None:
    template = Template.parse("{{ref}} عزيزي {name}، موعدك {date} ({name})}}")
    assert template.variables == ("name", "date")
    assert template.render({"name": "علي", "date": "الأحد"}) == (
        "{ref} عزيزي علي، موعدك الأحد (علي)}"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("hello {name", "unmatched '{' at character 7"),
        ("hello name}", "unmatched '}' at character 11"),
        ("hello {first name}", "{first name} at character 7 is not a variable name"),
        ("hello {name.upper}", "is not a variable name"),
        ("hello {0}", "is not a variable name"),
        ("hello {}", "is not a variable name"),
    ],
)
def test_bad_templates_say_where(text: str, where: str) -> None:
    with pytest.raises(AnnouncementInvalid) as caught:
        Template.parse(text)
    assert caught.value.field == "text"
    assert where in caught.value.message


def test_a_variable_missing_from_the_csv_is_named_before_anything(tmp_path: Path) -> None:
    file = load_contacts(write(tmp_path, "number,name\n+966501234567,Ali\n"))
    with pytest.raises(CampaignInvalid) as caught:
        prepare(file, "{name}: your appointment is on {date} at {time}")
    assert "{date}, {time}" in caught.value.message
    assert "variables: name" in caught.value.message


# --- checking rows ---------------------------------------------------------------------------


def test_every_invalid_row_is_reported_with_its_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "number,name,timezone\n"
        "+966501234567,Ali,\n"  # 2: fine
        "0501234567,Sara,\n"  # 3: not E.164
        "+14155550100,Bob,\n"  # 4: outside BRIDGE_ALLOWED_PREFIXES
        "+966501234568,,\n"  # 5: empty variable
        "+966501234569,Omar,Mars/Olympus\n"  # 6: bad zone
        "+966 50 123 4570,Huda,Asia/Riyadh\n",  # 7: fine after normalising
    )
    prepared = prepare(load_contacts(path), "مرحبا {name}")
    assert [(p.line, p.field) for p in prepared.problems] == [
        (3, "number"),
        (4, "number"),
        (5, "text"),
        (6, "timezone"),
    ]
    assert "number '0501234567' is not an E.164 number" in prepared.problems[0].message
    assert "BRIDGE_ALLOWED_PREFIXES" in prepared.problems[1].message
    assert "{name}" in prepared.problems[2].message
    assert "Mars/Olympus" in prepared.problems[3].message
    states = [(c.idx, c.state, c.number) for c in prepared.contacts]
    assert states == [
        (0, ContactState.PENDING, "+966501234567"),
        (1, ContactState.INVALID, "0501234567"),
        (2, ContactState.INVALID, "+14155550100"),
        (3, ContactState.INVALID, "+966501234568"),
        (4, ContactState.INVALID, "+966501234569"),
        (5, ContactState.PENDING, "+966501234570"),
    ]
    assert prepared.contacts[0].text == "مرحبا Ali"
    assert prepared.contacts[5].timezone == "Asia/Riyadh"
    assert prepared.contacts[1].error == str(prepared.problems[0])


def test_a_number_twice_is_called_once_and_later_rows_are_duplicates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "number,name\n+966501234567,Ali\n+966 50 123 4567,Ali again\n+966501234568,Sara\n"
        "+966501234567,Third\n",
    )
    prepared = prepare(load_contacts(path), "hi {name}")
    assert not prepared.problems
    assert [(d.line, d.message) for d in prepared.duplicates] == [
        (3, "+966501234567 is also on line 2: called once"),
        (5, "+966501234567 is also on line 2: called once"),
    ]
    assert [(c.state, c.outcome) for c in prepared.contacts] == [
        (ContactState.PENDING, None),
        (ContactState.DONE, DUPLICATE),
        (ContactState.PENDING, None),
        (ContactState.DONE, DUPLICATE),
    ]


def test_text_too_long_for_a_call_is_a_row_problem(tmp_path: Path) -> None:
    # 1990 characters fit Hamsa's limit, but '&' is 5 characters in TwiML: over 4000
    path = write(tmp_path, "number,body\n+966501234567,short\n+966501234568," + "&" * 1990 + "\n")
    prepared = prepare(load_contacts(path), "{body}")
    assert [(p.line, p.field) for p in prepared.problems] == [(3, "text")]
    assert "TwiML" in prepared.problems[0].message


def test_rendered_text_over_2000_characters_is_a_row_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "number,body\n+966501234567," + "ب" * 2001 + "\n")
    prepared = prepare(load_contacts(path), "{body}")
    assert [(p.line, p.field) for p in prepared.problems] == [(2, "text")]
    assert "at most 2000" in prepared.problems[0].message


def test_an_option_error_is_raised_once_not_per_row(tmp_path: Path) -> None:
    path = write(tmp_path, "number\n+966501234567\n+966501234568\n")
    with pytest.raises(CampaignInvalid, match="repeat must be 1 to 5"):
        prepare(load_contacts(path), "hello", repeat=9)


def test_campaign_options_are_checked_together() -> None:
    with pytest.raises(CampaignInvalid) as caught:
        CampaignConfig(
            text="t",
            from_="+966110000000",
            options=AnnouncementOptions("s", "d", "ar"),
            cps=0,
            retries=-1,
            retry_on=("busy", "answered"),
            window="9-5",
            timezone="Nowhere/City",
        )
    problems = caught.value.problems
    assert len(problems) == 5
    assert any("--retry-on" in p and "answered" in p for p in problems)


def test_config_round_trips_through_its_stored_form() -> None:
    config = CampaignConfig(
        text="t {name}",
        from_="+966110000000",
        options=AnnouncementOptions("s", "d", "ar"),
        retry_on=("busy",),
        window="20:00-08:00",
        timezone="Asia/Riyadh",
    )
    assert CampaignConfig.from_dict(config.to_dict()) == config
