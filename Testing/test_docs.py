"""The documents for new users and researchers say what the code does: the glossary covers the words
the README and panel use, CITATION.cff is valid Citation File Format 1.2.0 and names this package,
and the commands and classes docs/RESEARCH.md tells researchers to use exist as written."""

import dataclasses
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Citation File Format 1.2.0 (https://citation-file-format.github.io): the keys its schema allows
CFF_KEYS = {"abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi", "identifiers",
            "keywords", "license", "license-url", "message", "preferred-citation", "references", "repository",
            "repository-artifact", "repository-code", "title", "type", "url", "version"}
CFF_REQUIRED = {"authors", "cff-version", "message", "title"}
CFF_PERSON = {"address", "affiliation", "alias", "city", "country", "email", "family-names", "fax", "given-names",
              "name-particle", "name-suffix", "orcid", "post-code", "region", "tel", "website"}
CFF_ENTITY = {"address", "alias", "city", "country", "date-end", "date-start", "email", "fax", "location", "name",
              "orcid", "post-code", "region", "tel", "website"}
CFF_REFERENCE_TYPES = {"article", "book", "conference-paper", "data", "generic", "report", "software", "thesis",
                       "proceedings", "website"}  # the ones a reference here may need (the schema has more)
CFF_REFERENCE = {"abstract", "authors", "collection-title", "doi", "identifiers", "issue", "journal", "notes",
                 "pages", "start", "end", "title", "type", "url", "volume", "year", "publisher", "conference",
                 "version", "month"}  # a subset of the schema's reference keys: any other must be checked there
URL = re.compile(r"^(https|http|ftp|sftp)://.+")


def _author_ok(author: dict) -> bool:
    if "name" in author:  # an entity
        return set(author) <= CFF_ENTITY and isinstance(author["name"], str) and author["name"]
    return set(author) <= CFF_PERSON and all(isinstance(v, str) and v for v in author.values())


def test_citation_cff_is_valid_cff_1_2_0_and_names_this_package():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert CFF_REQUIRED <= set(cff) <= CFF_KEYS, set(cff) - CFF_KEYS
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["message"].strip()
    assert cff["authors"] == [{"name": "SelfSupCTDenoise contributors"}]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{cff["version"]}"' in pyproject and f'license = {{ text = "{cff["license"]}" }}' in pyproject
    homepage = re.search(r'EXTENSION_HOMEPAGE "([^"]+)"', (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert cff["repository-code"] == homepage.group(1) and URL.match(cff["repository-code"])
    assert all(isinstance(k, str) and k for k in cff["keywords"]) and len(set(cff["keywords"])) == len(cff["keywords"])
    for reference in cff["references"]:
        assert {"authors", "title", "type"} <= set(reference) <= CFF_REFERENCE, reference
        assert reference["type"] in CFF_REFERENCE_TYPES and all(_author_ok(a) for a in reference["authors"])
        assert isinstance(reference["year"], int) and URL.match(reference["url"])
        assert all(set(i) == {"type", "value"} and i["type"] in ("doi", "url", "swh", "other") and i["value"]
                   for i in reference.get("identifiers", []))
    assert "arXiv:2104.02326" in [i["value"] for r in cff["references"] for i in r.get("identifiers", [])]


def test_the_glossary_explains_every_term_a_new_user_meets_and_the_readme_links_it():
    glossary = (ROOT / "docs" / "GLOSSARY.md").read_text(encoding="utf-8")
    headings = re.findall(r"^\*\*(.+?)\*\*", glossary, flags=re.M)
    for term in ("Adaptation", "Bundle", "d25", "Guard", "Hann, Ram-Lak", "LDCT, NDCT", "Method noise",
                 "Noise / NDCT", "NPS", "Pretrained", "Pseudo-noise", "PSNR soft, PSNR edges", "Strength",
                 "Teacher period"):
        assert any(h.startswith(term) for h in headings), term
    assert headings == sorted(headings, key=str.lower)  # alphabetical, as it says
    assert "](docs/GLOSSARY.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_what_the_research_guide_tells_researchers_to_run_exists():
    from SelfSupCTDenoiseLib.bench.benchmark import Method, methods
    from SelfSupCTDenoiseLib.bench.lesion_benchmark import ROWS
    from SelfSupCTDenoiseLib.cli import build_parser

    guide = (ROOT / "docs" / "RESEARCH.md").read_text(encoding="utf-8")
    parser = build_parser()
    args = parser.parse_args(["evaluate", "--pair", "a.nrrd", "ra.nrrd", "--pair", "b.nrrd", "rb.nrrd",
                              "--json", "s.json"])
    assert [tuple(map(str, p)) for p in args.pair] == [("a.nrrd", "ra.nrrd"), ("b.nrrd", "rb.nrrd")]
    args = parser.parse_args(["benchmark", "--rows", "LDCT", "My filter", "--out", "out/mine"])
    assert args.rows == ["LDCT", "My filter"] and str(args.out) == "out/mine"
    assert "selfsupctdenoise evaluate --pair" in guide and "--rows LDCT" in guide
    fields = {f.name for f in dataclasses.fields(Method)}
    assert {"name", "bundle", "config", "filter", "scope"} <= fields
    for scope in ("both", "ndct", "clean", "ablation"):
        assert f"`{scope}`" in guide and any(m.scope == scope for m in methods())
    assert "`ROWS` in `bench/lesion_benchmark.py`" in guide and ROWS
    for example in ("bm3d_with_psd", "anisotropic_diffusion"):
        assert f"`{example}`" in guide
    assert (ROOT / "scripts" / "reproduce_benchmark.sh").is_file() and "scripts/reproduce_benchmark.sh" in guide
