"""Annotation import: Raven, Audacity, Sonic Visualiser, CSV -> the normalised table; checks name file and row."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from data_tools.annotations import (
    AnnotationTableError,
    import_annotations,
    load_class_map,
    raven_audio_stem,
    read_table,
    write_table,
)
from data_tools.cli import main as cli_main


def _wav(path, seconds: float, sample_rate: int, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * sample_rate)
    sf.write(path, np.zeros((frames, channels), dtype=np.float32), sample_rate, subtype="PCM_16")


def _events(result, file=None):
    return [(a.file, a.onset_s, a.offset_s, a.label, a.low_hz, a.high_hz, a.channel)
            for a in result.annotations if not a.is_marker and (file is None or a.file == file)]


def _messages(result):
    return [str(e) for e in result.errors]


def _tsv(path, rows):
    path.write_text("\n".join("\t".join(map(str, r)) for r in rows) + "\n", encoding="utf-8")
    return path


RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"]


# --- Raven ----------------------------------------------------------------------------------------------------------


def test_raven_table_named_after_its_audio_dedupes_views_and_keeps_channels(tmp_path):
    _wav(tmp_path / "rec1.wav", 3.0, 16000, channels=2)
    table = _tsv(tmp_path / "rec1.Table.1.selections.txt", [
        RAVEN_HEADER + ["Species"],
        [1, "Waveform 1", 1, 0.5, 1.25, 0, 0, "robin"],  # the waveform view's copy: must lose to the spectrogram row
        [1, "Spectrogram 1", 1, 0.5, 1.25, 1000, 4000, "robin"],
        [2, "Spectrogram 1", 2, 2.0, 2.5, 500, 900, "wren"],
    ])
    result = import_annotations([table], "raven")
    assert result.errors == []
    assert _events(result) == [("rec1.wav", 0.5, 1.25, "robin", 1000.0, 4000.0, 0),
                               ("rec1.wav", 2.0, 2.5, "wren", 500.0, 900.0, 1)]
    assert raven_audio_stem(table) == "rec1"


def test_raven_multi_file_table_uses_begin_file_and_file_offset(tmp_path):
    _wav(tmp_path / "audio" / "a.wav", 3.0, 8000)
    _wav(tmp_path / "audio" / "sub" / "b.wav", 3.0, 8000)
    # Begin Time runs on across the file list: b.wav starts at 3 s, so its selection at 3.5 s is 0.5 s into b.wav
    table = _tsv(tmp_path / "both.txt", [
        RAVEN_HEADER + ["Begin File", "File Offset (s)", "Call"],
        [1, "Spectrogram 1", 1, 0.5, 1.0, 100, 200, "a.wav", 0.5, "x"],
        [2, "Spectrogram 1", 1, 3.5, 4.25, 100, 200, "b.wav", 0.5, "y"],
    ])
    result = import_annotations([table], "raven", audio_dir=tmp_path / "audio", label_column="Call")
    assert result.errors == []
    assert _events(result) == [("a.wav", 0.5, 1.0, "x", 100.0, 200.0, 0),
                               ("sub/b.wav", 0.5, 1.25, "y", 100.0, 200.0, 0)]


def test_raven_errors_name_file_and_row(tmp_path):
    _wav(tmp_path / "r.wav", 2.0, 8000)
    table = _tsv(tmp_path / "r.Table.1.selections.txt", [
        RAVEN_HEADER + ["Annotation"],
        [1, "Spectrogram 1", 1, 0.2, 0.4, 100, 200, "ok"],
        [2, "Spectrogram 1", 1, 0.9, 0.5, 100, 200, "backwards"],
        [3, "Spectrogram 1", 1, "soon", 0.5, 100, 200, "nan"],
        [4, "Spectrogram 1", 1, 1.5, 2.5, 100, 200, "past the end"],
        [5, "Spectrogram 1", 1, 0.1, 0.3, 300, 200, "band upside down"],
    ])
    result = import_annotations([table], "raven")
    assert [e[3] for e in _events(result)] == ["ok"]
    messages = _messages(result)
    assert len(messages) == 4
    for row, text in zip((3, 4, 5, 6), ("not before", "'soon' is not a number", "past the end", "not below high")):
        assert any(m.startswith(f"{table}: row {row}:") and text in m for m in messages), (row, messages)
    missing = _tsv(tmp_path / "bad.txt", [["Selection", "Begin Time (s)"], [1, 0.1]])
    assert "missing column(s) ['End Time (s)']" in _messages(import_annotations([missing], "raven"))[0]


# --- Audacity -------------------------------------------------------------------------------------------------------


def test_audacity_labels_with_frequency_lines_and_errors(tmp_path):
    _wav(tmp_path / "song.flac", 3.0, 22050)
    labels = tmp_path / "song.txt"
    labels.write_text("\\\t10\t20\n"           # a frequency line with no label above it
                      "0.100000\t0.400000\tsong\n\\\t300.5\t3000.25\n"
                      "1,5\t2,0\t\n"            # decimal commas, no label -> --empty-label
                      "2.2\t2.2\tpoint\n", encoding="utf-8")  # a point label: no duration
    result = import_annotations([labels], "audacity", empty_label="unknown")
    assert _events(result) == [("song.flac", 0.1, 0.4, "song", 300.5, 3000.25, None),
                               ("song.flac", 1.5, 2.0, "unknown", None, None, None)]
    messages = _messages(result)
    assert len(messages) == 2
    assert any(m.startswith(f"{labels}: row 1:") and "without a label line" in m for m in messages)
    assert any(m.startswith(f"{labels}: row 5:") and "point label" in m for m in messages)


def test_empty_label_track_marks_the_file_annotated_without_events(tmp_path):
    _wav(tmp_path / "quiet.wav", 1.0, 8000)
    (tmp_path / "quiet.txt").write_text("", encoding="utf-8")
    result = import_annotations([tmp_path / "quiet.txt"], "audacity")
    assert [(a.file, a.is_marker) for a in result.annotations] == [("quiet.wav", True)]
    table = tmp_path / "t.csv"
    write_table(result.annotations, table)
    files = read_table(table)
    assert list(files) == ["quiet.wav"] and files["quiet.wav"].events == []


# --- Sonic Visualiser -----------------------------------------------------------------------------------------------


SV_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE sonic-visualiser>
<sv>
  <data>
    <model id="1" name="" sampleRate="44100" start="8000" end="20000" type="sparse" dimensions="2" resolution="1"
           dataset="0" subtype="box" units="Hz" />
    <dataset id="0" dimensions="2">
      <point frame="8000" value="500" duration="4000" extent="1000" label="" />
      <point frame="16000" value="2000" duration="4000" extent="500" label="chirp" />
      <point frame="17000" value="2000" duration="-10" extent="500" label="broken" />
    </dataset>
    <model id="2" name="" sampleRate="44100" type="sparse" dimensions="1" resolution="1" dataset="3" />
    <dataset id="3" dimensions="1">
      <point frame="100" label="instant" />
    </dataset>
  </data>
</sv>
"""


def test_sonic_visualiser_frames_use_the_audio_rate_not_the_xml_rate(tmp_path):
    # The XML says 44100 Hz (as pykanto's files do), the audio is 16 kHz: frames count at 16 kHz.
    _wav(tmp_path / "bird.wav", 2.0, 16000)
    xml = tmp_path / "bird.xml"
    xml.write_text(SV_XML, encoding="utf-8")
    result = import_annotations([xml], "sonic-visualiser")
    assert _events(result) == [("bird.wav", 0.5, 0.75, "event", 500.0, 1500.0, None),
                               ("bird.wav", 1.0, 1.25, "chirp", 2000.0, 2500.0, None)]
    messages = _messages(result)
    assert any(m.startswith(f"{xml}: point 3:") and "not before" in m for m in messages)
    assert any(m.startswith(f"{xml}: point 1:") and "time instant" in m for m in messages)
    assert result.notes == []

    # Without the audio the XML rate is all there is: used, with a note saying so.
    alone = tmp_path / "elsewhere" / "bird.xml"
    alone.parent.mkdir()
    alone.write_text(SV_XML, encoding="utf-8")
    result = import_annotations([alone], "sonic-visualiser")
    assert _events(result)[0][1:3] == (8000 / 44100, 12000 / 44100)
    assert any("sampleRate 44100" in n for n in result.notes)


# --- CSV, class map, table ------------------------------------------------------------------------------------------


def test_csv_aliases_extra_columns_markers_and_row_errors(tmp_path):
    _wav(tmp_path / "siteA" / "x.wav", 2.0, 8000)
    table = tmp_path / "ann.csv"
    table.write_text("filename,start,end,species,low,high,site\n"
                     "siteA/x.wav,0.1,0.5,robin,100,900,A\n"
                     "siteA/x.wav,-0.1,0.5,robin,,,A\n"
                     "siteA/y.wav,,,,,,B\n"
                     "siteA/x.wav,0.2,0.3,robin,100,,A\n", encoding="utf-8")
    result = import_annotations([table], "csv", audio_dir=tmp_path)
    assert _events(result) == [("siteA/x.wav", 0.1, 0.5, "robin", 100.0, 900.0, None)]
    assert [(a.file, a.extra) for a in result.annotations if a.is_marker] == [("siteA/y.wav", {"site": "B"})]
    messages = _messages(result)
    assert any(m.startswith(f"{table}: row 3:") and "negative" in m for m in messages)
    assert any(m.startswith(f"{table}: row 5:") and "both or neither" in m for m in messages)

    out = tmp_path / "norm.csv"
    assert write_table(result.annotations, out) == 1
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file", "onset_s", "offset_s", "label", "low_hz", "high_hz", "channel", "site"]
    files = read_table(out)
    assert files["siteA/x.wav"].events == [{"onset_s": 0.1, "offset_s": 0.5, "label": "robin", "low_hz": 100.0,
                                            "high_hz": 900.0}]
    assert files["siteA/x.wav"].extra == {"site": "A"} and files["siteA/y.wav"].events == []


def test_class_map_renames_drops_and_rejects_unknown_labels(tmp_path):
    _wav(tmp_path / "x.wav", 3.0, 8000)
    table = tmp_path / "ann.csv"
    table.write_text("file,onset,offset,label\nx.wav,0.1,0.2,robin\nx.wav,0.3,0.4,noise\nx.wav,0.5,0.6,wren\n"
                     "x.wav,0.7,0.8,owl\n", encoding="utf-8")
    yaml_map = tmp_path / "map.yaml"
    yaml_map.write_text("robin: songbird\nwren: songbird\nnoise: null\n", encoding="utf-8")
    csv_map = tmp_path / "map.csv"
    csv_map.write_text("label,class\nrobin,songbird\nwren,songbird\nnoise,\n", encoding="utf-8")
    for path in (yaml_map, csv_map):
        mapping = load_class_map(path)
        assert mapping == {"robin": "songbird", "wren": "songbird", "noise": None}
        result = import_annotations([table], "csv", class_map=mapping)
        assert [e[3] for e in _events(result)] == ["songbird", "songbird"]
        assert result.dropped_by_map == 1
        assert [str(e) for e in result.errors] == [f"{table}: row 5: label 'owl' is not in the class map"]
    bad = tmp_path / "bad.csv"
    bad.write_text("raw,target\nx,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header 'label,class'"):
        load_class_map(bad)


def test_read_table_rejects_bad_rows_and_inconsistent_file_columns(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("file,onset_s,offset_s,label,site\na.wav,0.1,0.2,x,A\na.wav,0.3,0.2,x,A\na.wav,0.4,0.5,x,B\n",
                     encoding="utf-8")
    with pytest.raises(AnnotationTableError) as info:
        read_table(table)
    message = str(info.value)
    assert f"{table}: row 3: onset 0.3 s is not before" in message
    assert f"{table}: row 4: column 'site' is 'B' here but 'A'" in message


def test_cli_on_error_fail_writes_nothing_skip_writes_good_rows(tmp_path, capsys):
    _wav(tmp_path / "r.wav", 2.0, 8000)
    labels = tmp_path / "r.txt"
    labels.write_text("0.1\t0.2\tcall\n0.5\t0.3\tcall\n", encoding="utf-8")
    out = tmp_path / "table.csv"
    assert cli_main(["annotations", str(labels), "--format", "audacity", "--out", str(out)]) == 2
    assert not out.exists()
    assert f"{labels}: row 2: onset 0.5 s is not before offset 0.3 s" in capsys.readouterr().err
    assert cli_main(["annotations", str(labels), "--format", "audacity", "--out", str(out),
                     "--on-error", "skip"]) == 3
    assert read_table(out)["r.wav"].events == [{"onset_s": 0.1, "offset_s": 0.2, "label": "call"}]
    assert cli_main(["annotations", str(tmp_path / "missing.txt"), "--format", "audacity", "--out", str(out)]) == 2
