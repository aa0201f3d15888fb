"""A Java-free copy of the PTB tokenization that pycocoevalcap applies before scoring captions.

pycocoevalcap's ``PTBTokenizer`` joins the captions with newlines, runs Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` over them in Java and drops punctuation tokens.  This
re-implements that lexer: longest match over the jar's rules in its order, with JFlex-style trailing
context, on a "shape" of the text in which each character stands for its lexer character class.
"""

from __future__ import annotations

import array
import functools
import re
import shutil
import unicodedata

__all__ = ["PUNCTUATIONS", "java_available", "java_tokenize_all", "tokenize", "tokenize_all"]

# pycocoevalcap/tokenizer/ptbtokenizer.py drops these after the Java lower-casing ("-lrb-" stays).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!",
                          ",", ":", "-", "--", "...", ";"])


def _chars(spec: str) -> re.Pattern:
    """A one-character class from hex code points and ranges, e.g. ``"2c2-2c5 378"``."""
    parts = ("-".join(re.escape(chr(int(c, 16))) for c in p.split("-")) for p in spec.split())
    return re.compile("[" + "".join(parts) + "]")


# How the 3.4.1 jar classifies the Basic Multilingual Plane (measured against it): marks it glues
# into words, letters too new for its Unicode tables, and the symbols it keeps as tokens.  Other
# characters that are not letters, digits or spaces are deleted as "untokenizable".
_MARKS = _chars(
    "2c2-2c5 2d2-2df 2e5-2eb 2ed 2ef-36f 375 378-379 384-385 3f6 483-487 55a-55f 591-5bd 5bf "
    "5c1-5c2 5c4-5c5 5c7 615-61a 64b-65e 670 6d6-6e4 6e7-6ed 6fd-6fe 70f 711 730-74c 7a6-7b0 "
    "7eb-7f3 900-903 93c 93e-94e 951-955 962-963 981-983 9bc 9be-9c4 9c7-9c8 9cb-9cd 9d7 9e2-9e3 "
    "a01-a03 a3c a3e-a4f a81-a83 abc abe-acf b82 bbe-bc2 bc6-bc8 bca-bcd c01-c03 c3e-c56 d3e-d44 "
    "d46-d48 e31 e34-e3a e47-e4e eb1 eb4-ebc ec8-ecd")
_NEWER = _chars(
    "37f 528-52f 560 588 5ef 860-86a 870-887 889-88e 8a1 8ad-8c9 978 980 9fc af9 c34 c5a c5d c80 "
    "cdd d04 d54-d56 d5f de6-def e86 e89 e8c e8e-e93 e98 ea0 ea8-ea9 eac 13f5 13f8-13fd 16f1-16f8 "
    "170d 171f 1878 191d-191e 19b0-19c0 19c8-19c9 1b4c 1c80-1c88 1c90-1cba 1cbd-1cbf 1cf2-1cf3 "
    "1cfa 2c2f 2c5f 312e-312f 31bb-31bf 4db6-4dbf 9fcd-9fff a698-a69d a78f a794-a79f a7ab-a7ca "
    "a7d0-a7d1 a7d3 a7d5-a7d9 a7f2-a7f7 a8fd-a8fe a9e0-a9e4 a9e6-a9ef a9f0-a9f9 a9fa-a9fe "
    "aa7e-aa7f ab30-ab5a ab5c-ab69 ab70-abbf")
_KEPT = _chars(
    "80 85 91-94 96-97 a0-a9 ab-b4 b6-b9 bb-bf d7 f7 37e 387 589 5be 5c0 5c3 5c6 5f3-5f4 600-603 "
    "606-60c 614 61b 61e-61f 66a 66d 6d4 700-70d 7f6-7f8 964-965 e3f e4f 1fbd 2013-2023 2026 "
    "2028-2029 2030-203b 203e-2042 2044 2070 2074-207e 2080-208e 20a0 20a4 20ac 2100-2101 "
    "2103-2106 2108-2109 2114 2116-2118 211e-2123 2125 2127 2129 212e 213a-213b 2140-2144 "
    "214a-214d 214f 2153-215e 2190-2bff 3001-3002 3012 30fb ff01-ff0f ff1a-ff20 ff3b-ff40 "
    "ff5b-ff65 ffe0-ffe1 ffe5-ffe6 ad 58a 2010-2011 66b-66c")
_SPACES = _chars("2000-200a 3000")


@functools.lru_cache(maxsize=8192)
def _shape(ch: str) -> str:
    """The representative of ``ch`` that the rules below are written against."""
    if ch < "\x80":
        return ch if " " <= ch < "\x7f" or ch in "\t\n\x0b\x0c\r" else "\x01"
    if _KEPT.match(ch):
        return ch
    if _SPACES.match(ch):
        return "\u2000"
    if _MARKS.match(ch):
        return "\u0300"  # part of a WORD, but not a [:letter:] for the other rules
    if "\u2160" <= ch <= "\u216f":
        return "\x02"  # deleted, but an upper-case character for the rules (Roman numerals)
    if (ch.isalpha() and not _NEWER.match(ch)) or ch in "\u1885\u1886":
        return "\u00c0" if ch.isupper() and not "\u13a0" <= ch <= "\u13ff" else "\u00aa"
    if unicodedata.category(ch) == "Nd" and not _NEWER.match(ch):
        return "\u0660"
    return "\x01"  # untokenizable: deleted (this includes both UTF-16 halves of an emoji)


def _alts(words: str) -> str:
    """An alternation of JFlex literals: caseless, except inside ``[...]`` classes."""
    split = (re.split(r"(\[[^\]]*\])", w.replace(".", r"\.")) for w in words.split())
    return "|".join("".join(p if p[:1] == "[" else f"(?i:{p})" for p in ps if p) for ps in split)


# Lexer macros (on the shape string): letters, upper-case letters, digits, apostrophes, spaces...
L, LU, DG = "A-Za-z\u00aa\u00c0", "A-Z\u00c0\x02\u24b6-\u24cf", "0-9\u0660"
LD, WL = f"[{L}{DG}]", f"[{L}\xad\u0300]"
AP, APX = "(?:['\x92\u2019]|(?i:&apos;))", "(?:['`\x92\u2019\x91\u2018\u201b]|(?i:&apos;))"
SP, NL = "[ \t\xa0\u2000]", "(?:\r\n|[\r\n\x0b\x0c\x85\u2028\u2029])"
SPNL, TAG, INSENTP = f"(?:{SP}|{NL})", "[A-Za-z][A-Za-z0-9_:.-]*", "[,;:\u3001]"
SGML = (f"<(?:[!?][A-Za-z-][^>\r\n]*|{TAG}(?: +{TAG}(?: *= *(?:'[^'\r\n]*'|\"[^\"\r\n]*\"))?)* */?"
        f"|/{TAG}) *>")
WORD = f"{WL}(?:{WL}|[{DG}])*(?:[.!?]{WL}(?:{WL}|[{DG}])*)*"
THING = f"(?:[dDoOlL]{APX}{LD})?{LD}+(?:[-_\u058a\u2010\u2011](?:[dDoOlL]{APX}{LD})?{LD}+)*"
ACRO = (r"(?:(?i:(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))"
        r"|[A-Za-z](?:\.[A-Za-z])*)")
HTHING = r"[A-Za-z0-9][A-Za-z0-9.,\xad]*(?:-(?:[A-Za-z](?:\.[A-Za-z])+\.|[A-Za-z0-9\xad]+))+"
THINGA = r"[A-Z]+(?:(?:(?i:&amp;)|[+&])[A-Z]+)+"
REDAUX, SREDAUX = f"{AP}(?:[msdMSD]|(?i:re|ve|ll))", f"[nN]{APX}[tT]"
URLCH = r"[^ \t\n\f\r\"<>|(){}"  # (unclosed on purpose: each use adds its own exclusions)
ABBREV1 = "(?:" + _alts(  # doubles its period before a capital or a blank line
    "Jan Feb Mar Apr Jun Jul Aug Sept Sep Oct Nov Dec Mon Tues Tue Wed Thurs Thu Fri Ala Ariz [A]z "
    "[A]rk Calif Colo Conn Ct Dak [D]el Fla Ga [I]ll Ind Kans? Ky [L]a [M]ass Md Mich Minn [M]iss "
    "Mo Mont Neb Nev Okla [O]re [P]a Penn Tenn [T]ex Va Vt [W]ash Wisc? Wyo Inc Cos? Corp "
    "Pp?t[ye]s? Ltd Plc Rt Bancorp Bhd Assn Univ Intl Sys tel est ext sq Jr Sr Bros Ed.D Ph.D Blvd "
    "Rd Esq etc al seq Bldg") + r")\."
ABBREV2 = _alts(  # keeps its period
    "Mr Mrs Ms Drs? Profs? Sens? Reps? Attys? Lt Col Gen Messrs Govs? Adm Rev Maj Sgt Cpl Pvt Mt "
    "Capt Ste? Ave Pres Lieut Hon Brig Co?mdr Pfc Spc Supts? Det Adj Adv Asst Assoc Ft Ph Invt "
    "Elec Natl M[ft]g Dept vs Alex Wm Jos Cie cf TREAS") + f"|{ACRO}"
STARTERS = _alts(  # words after which an acronym's period also ends the sentence
    "[A] [A]bout [A]ccording [A]dditionally [A]fter [A]n [A]s [A]t [B]ut [E]arlier [H]e [H]er "
    "[H]ere [H]owever [I]f [I]n [I]t [L]ast [M]any [M]ore [M]r. [M]s. [N]ow [O]nce [O]ne [O]ther "
    "[O]ur [S]he [S]ince [S]o [S]ome [S]uch [T]hat [T]he [T]heir [T]hen [T]here [T]hese [T]hey "
    "[T]his [W]e [W]hen [W]hile [W]hat [Y]et [Y]ou")
EXT = ("bat|bmp|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?|jar|java|jpe?g|mov|mp3|pdf|php|pl|png|"
       "ppt|ps|py|sql|tar|txt|wav|x|xml|zip")

_QMAP = {**dict.fromkeys("\x91\u2018\u201b\u2039", "`"), **dict.fromkeys("\x92\u2019\u203a", "'"),
         **dict.fromkeys("\x93\u201c\xab", "``"), **dict.fromkeys("\x94\u201d\xbb", "''")}
_QRX = re.compile("&apos;|&quot;|[\"'" + "".join(_QMAP) + "]")  # Java's replaceAll: case-sensitive
_LEFT = {"'": "`", "&apos;": "`", '"': "``", "&quot;": "``", **_QMAP}
_RIGHT = {"'": "'", "&apos;": "'", '"': "''", "&quot;": "''", **_QMAP}
_FIXED = {"\xbc": "1/4", "\xbd": "1/2", "\xbe": "3/4", "\u2153": "1/3", "\u2154": "2/3",
          "\xa2": "cents", "\xa3": "#", "\x80": "$", "\xa4": "$", "\u20a0": "$", "\u20ac": "$",
          "(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}

_left = functools.partial(_QRX.sub, lambda m: _LEFT[m.group()])  # quote normalization when the
_right = functools.partial(_QRX.sub, lambda m: _RIGHT[m.group()])  # quote probably opens / closes


def _norm(s: str) -> str:
    """Spaces -> U+00A0, soft hyphens dropped (a lone one becomes '-'), &amp; -> &, () -> -LRB-.

    Each rule using it only ever sees the characters its own Java action normalizes."""
    s = re.sub("(?i:&amp;)", "&", s.replace(" ", "\xa0")).replace("\xad", "") or "-"
    return s.replace("(", "-LRB-").replace(")", "-RRB-")


# (pattern, action) in the jar's rule order.  A group "t" marks the token when the rest of the
# pattern is trailing context.  Actions: None keeps the text; an int pushes that many characters
# back; a str replaces the token; a callable maps it; "acro"/"abbr" re-read the final period.
_RULE_SPECS = [
    (r"(?i:c\+\+|[cf]#)", None), ("(?i:cannot|'twas)", 3),
    ("(?i:'tis|gonna|gotta|lemme|gimme|wanna)", 2), (SGML, lambda s: s.replace(" ", "\xa0")),
    ("(?i:&(?:MD|mdash|ndash);)|[\x96\x97\u2013\u2014\u2015]", "--"), ("(?i:&amp;)", "&"),
    ("(?i:&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);)", None),
    (f"(?P<t>{WORD}){REDAUX}", _norm), (f"(?P<t>[A-Za-z\xad]*[A-MO-Za-mo-z]\xad*){SREDAUX}", _norm),
    (WORD, _norm),
    (f"{AP}[nN]{AP}?|[lLdDjJ]{AP}|(?i:dunkin|somethin|ol){AP}|{AP}(?i:em|cause|till?)|[oO]{APX}[oO]"
     f"|[A-HJ-XZn]{APX}[{L}]{{2,}}|{AP}[2-9]0[sS]|[{L}]+[aeiouyAEIOUY]{APX}[aeiouA-Z][{L}]*"
     r"|(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)", None),
    (f"(?P<t>[yY]{AP})[{L}]", None),
    (rf"(?i:https?)://{URLCH}]+{URLCH}.!?,-]", None),
    (r"(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}"  # ",-_" is a range, as in Java
     r"|(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu))"
     r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?", None),
    (rf"(?:(?i:&lt;)|<)?[a-zA-Z0-9]{URLCH}\xa0]*@(?:{URLCH}.\xa0]+\.)*{URLCH}.\xa0]+"
     r"(?:(?i:&gt;)|>)?", None),
    (f"@[a-zA-Z_][a-zA-Z_0-9]*|#{WL}+", None),
    (f"(?P<t>{REDAUX})[^A-Za-z]", _right), (SREDAUX, _right),
    (f"[{DG}]{{1,2}}[-/][{DG}]{{1,2}}[-/][{DG}]{{2,4}}", None),
    (f"[-+]?(?:[{DG}]*(?:[.:,\xad\u066b\u066c][{DG}]+)+|[{DG}]+)", _norm),
    ("[\u207a\u207b\u208a\u208b]?(?:[\u2070\xb9\xb2\xb3\u2074-\u2079]+|[\u2080-\u2089]+)", None),
    (f"(?:[{DG}]{{1,4}}[- \xa0])?[{DG}]{{1,4}}(?:\\\\?/|\u2044)[{DG}]{{1,4}}", _norm),
    ("[\xbc\xbd\xbe\u2153-\u215e]", lambda s: _FIXED.get(s, s)),
    (f"-(?i:RRB|LRB|RCB|LCB|RSB|LSB)-|(?i:C\\.D\\.s|pro-|anti-|S(?:&amp;|&)(?:P-500|Ls)|Cap{AP}n"
     f"|c{AP}est)", _norm),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None),
    (r"[A-Z]*\$|#", None),
    ("[\xa2-\xa5\x80\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
     lambda s: _FIXED.get(s, s)),
    (f"(?P<t>{ACRO}\\.){SPNL}+(?:{STARTERS}|{SGML}){SPNL}", "acro"),
    (f"(?P<t>(?i:ca|figs?|prop|nos?|art|bldg|pp|op)\\.){SPNL}?[{DG}]", None),
    (f"(?P<t>(?i:pty|pte|pvt|co)\\.){SP}(?i:ltd|lim|llc)", None),
    (f"(?P<t>{ABBREV1}){SPNL}(?:{SPNL}|[{LU}]|{SGML})", "abbr"),
    (f"(?P<t>{ABBREV1})..", None), (ABBREV1, "abbr"), (f"(?:{ABBREV2})\\.", None),
    (f"(?P<t>{ACRO}){SPNL}", None), (f"(?P<t>{AP}[0-9][0-9]){SPNL}", None),
    (f"(?P<t>{LD}+(?:\\.{LD}+)*\\.(?i:{EXT}))(?:{SPNL}|[.?!,])", None),
    (f"(?P<t>{WORD}\\.){INSENTP}", _norm),
    (r"(?:\([0-9]{2,3}\)[ \xa0]?|(?:\+\+?)?(?:[0-9]{2,4}[- \xa0])?[0-9]{2,4}[- \xa0])[0-9]{3,4}"
     r"[- \xa0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}", _norm),
    ('(?P<t>"|(?i:&quot;))[A-Za-z0-9$]', _left), ('"|(?i:&quot;)', _right),
    (r"(?P<t>[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]])[^A-Za-z0-9]", _norm),
    ("(?i:&lt;|&gt;)", lambda s: "<" if s[1] in "lL" else ">"), ("<<|>>", None),
    (r"[\^x=~<>]\.\[\^x=~<>]|[-^x=~<>']_[-^x=~<>']|\([-^x=~<>'][_.]?[-^x=~<>']\)"
     r"|\([\^x=~<>']-[\^x=~<>'`]\)", _norm),
    ("[(\\[{)\\]}]", _FIXED.get), ("-+", lambda s: "--" if 3 <= len(s) <= 4 else s),
    ("\\.{3,5}|(?:\\.[ \xa0]){2,4}\\.|[\x85\u2026]", "..."),
    (r"@+|#+|_+|\*+|(?:\\\*){1,3}|[,;:\u3001]|[?!]+|=", None),
    (f"(?P<t>{HTHING}\\.){INSENTP}|{HTHING}", _norm), (f"(?P<t>{THING}\\.){INSENTP}|{THING}", None),
    (f"(?P<t>{THINGA}\\.){INSENTP}|{THINGA}", _norm),
    ("(?P<t>')[A-Za-z][^ \t\n\r\xa0]", _left), (REDAUX, _right),
    (f"[`\u2018-\u201f\x91-\x94\u2039\u203a\xab\xbb]{{1,2}}|''|{AP}", _right),
    ("[ \t\xa0\u2000]+|(?i:&nbsp;)|[\x01\x02\u058a\u2010\u2011\u066b\u066c]", ""),
    (NL, "\n"), (".", None),
]
_RULES = [(re.compile(p, re.S), a) for p, a in _RULE_SPECS]
# Shortcuts for the commonest cases (the same result as the rules, far fewer regex calls).
_FAST = re.compile(r"[A-Za-z]+(?=[ \n]|\Z)|[,;:?!.](?=\n|\Z|[ \t][A-Za-z])|[ \t][ \t\xa0\u2000]*"
                   r"|\n")
_SLOW = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_ASTRAL, _HALF = re.compile("[\U00010000-\U0010ffff]"), re.compile("[\ud800-\udfff]")
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _lex(text: str) -> list[list[str]]:
    """Tokenize like ``PTBTokenizer -preserveLines -lowerCase``; one token list per output line."""
    if _ASTRAL.search(text):  # Java sees a non-BMP character as two UTF-16 units; so do the rules
        text = "".join(map(chr, array.array("H", text.encode("utf-16")[2:])))  # native order
    shape = "".join(map(_shape, text))
    lines: list[list[str]] = [[]]
    pos = 0
    while pos < len(text):
        fast = _FAST.match(shape, pos)
        if fast and fast.group().lower() not in _SLOW:
            if fast.group() == "\n":
                lines.append([])
            elif shape[pos] not in " \t":
                lines[-1].append(text[pos:fast.end()].lower())
            pos = fast.end()
            continue
        best, action = None, None
        for rx, act in _RULES:
            m = rx.match(shape, pos)
            if m and (best is None or m.end() > best.end()):
                best, action = m, act
        stop = best.end("t") if best.re.groupindex and best.group("t") is not None else best.end()
        tok = text[pos:stop]
        if isinstance(action, int):
            stop, tok = stop - action, tok[:-action]
        elif action in ("acro", "abbr"):  # "x." -> "x" "."; "U.S." -> "U.S." "."
            stop, tok = stop - 1, tok[:1] if action == "acro" and len(tok) == 2 else tok
        elif action is not None:
            tok = action if isinstance(action, str) else action(tok)
        pos = stop
        if action == "\n":
            lines.append([])
        elif action != "":
            if _HALF.search(tok):  # re-pair UTF-16 halves; Java prints a lone one as '?'
                tok = _HALF.sub("?", _PAIR.sub(lambda m: m.group().encode(
                    "utf-16", "surrogatepass").decode("utf-16"), tok))
            lines[-1].append(tok.lower())
    return lines


def _finish(tokens: list[str]) -> str:
    """What pycocoevalcap keeps of one output line: the non-punctuation tokens, space-joined."""
    return " ".join(w for w in " ".join(tokens).rstrip().split(" ") if w not in PUNCTUATIONS)


def tokenize(text: str) -> str:
    """One caption as ``PTBTokenizer().tokenize`` gives it: lower-cased PTB tokens without
    pycocoevalcap's punctuation, space-joined.  Like upstream it keeps only the first output line
    when the caption holds a line separator the jar honours (``'\\r'``, ``'\\u2028'``, ...)."""
    return _finish(_lex(text.replace("\n", " "))[0])


def tokenize_all(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Pure-Python ``PTBTokenizer().tokenize`` for ``{id: [caption, ...]}`` (plain strings).

    As upstream, all captions are tokenized as one text (a caption's end can depend on the next
    caption: a final ``"x."`` loses its period before ``"The ..."``) and the output lines are zipped
    back onto the ids, so even line separators inside a caption shift the later ones as in Java.
    """
    ids = [k for k, caps in captions.items() for _ in caps]
    lines = _lex("\n".join(c.replace("\n", " ") for caps in captions.values() for c in caps))
    out: dict[str, list[str]] = {}
    for k, line in zip(ids, lines, strict=False):  # zip() truncates, as upstream
        out.setdefault(k, []).append(_finish(line))
    return out


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (needed by :func:`java_tokenize_all`)."""
    return shutil.which("java") is not None


def java_tokenize_all(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Run pycocoevalcap's official Java ``PTBTokenizer`` on ``{id: [caption, ...]}``."""
    if not java_available():
        raise RuntimeError("java is not on PATH, so pycocoevalcap's PTBTokenizer cannot run; "
                           "captionkit.metrics.ptb.tokenize_all gives the same result without it")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
