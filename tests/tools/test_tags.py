"""Tags: definitions with their whole ranges and signatures, references, for each language."""

import pytest

from loopcli.tools.languages import language_for
from loopcli.tools.tags import Tag, extract_tags, query

PYTHON = b'''\
import os

LIMIT = 10

@register
class Store(Base, mixins.Cached):
    """Docstring."""

    @property
    def size(self) -> Counter:
        return helper(1)

    def put(self,
            key: str,
            value: List[Item]):  # trailing comment
        # a comment before the body
        self.size()

def main():
    def inner():
        pass
    return Store()
'''

# (language, source, expected definitions as (name, category), expected references as (name, category))
SAMPLES = [
    ("javascript", b"""\
class Widget extends Base {
  constructor() { super(); }
  render(x) { this.paint(); return new Frame(); }
}
const make = (a) => a + 1;
function build() { make(1); }
export const VERSION = "1";
""",
     {("Widget", "class"), ("constructor", "method"), ("render", "method"), ("make", "function"),
      ("build", "function"), ("VERSION", "constant")},
     {("Base", "class"), ("paint", "call"), ("Frame", "class"), ("make", "call")}),
    ("typescript", b"""\
export class Widget<T> extends Base implements Shape {
  private size: number;
  constructor(opts: Options) { super(); }
  render(): void { paint(); }
}
interface Shape { area(): number; }
type Id = string | number;
enum Color { Red }
namespace Geometry { export function unit(): Point { return new Point(); } }
export const scale = (x: number): Ratio => x;
abstract class Figure { abstract draw(): void; }
""",
     {("Widget", "class"), ("constructor", "method"), ("render", "method"), ("Shape", "interface"),
      ("area", "method"), ("Id", "type"), ("Color", "enum"), ("Geometry", "module"),
      ("unit", "function"), ("scale", "function"), ("Figure", "class"), ("draw", "method")},
     {("Base", "class"), ("Shape", "type"), ("Options", "type"), ("paint", "call"),
      ("Point", "class"), ("Ratio", "type")}),
    ("go", b"""\
package shapes

type Square struct { side int }
type Shape interface { Area() int }
type (
    Meters int
    Pair struct{}
)
func (s *Square) Area() int { return compute(s.side) }
func compute(x int) int { return x * x }
const Zero = 0
""",
     {("Square", "struct"), ("Shape", "interface"), ("Area", "method"), ("Meters", "type"),
      ("Pair", "struct"), ("compute", "function"), ("Zero", "constant")},
     {("compute", "call"), ("Square", "type")}),
    ("rust", b"""\
struct Point { x: i32 }
enum Dir { Up }
trait Shape { fn area(&self) -> f64; }
impl Shape for Point { fn area(&self) -> f64 { helper() } }
impl Point { pub fn new() -> Self { Point::origin(); self.scale() } }
fn helper() -> f64 { println!("x"); 1.0 }
mod geometry { pub fn unit() {} }
const MAX: i32 = 1;
macro_rules! square { ($x:expr) => { $x * $x }; }
""",
     {("Point", "struct"), ("Dir", "enum"), ("Shape", "trait"), ("area", "method"), ("Point", "impl"),
      ("new", "method"), ("helper", "function"), ("geometry", "module"), ("unit", "function"),
      ("MAX", "constant"), ("square", "macro")},
     {("Shape", "implementation"), ("helper", "call"), ("origin", "call"), ("scale", "call"),
      ("println", "call")}),
    ("java", b"""\
package shapes;

@Entity
public class Square extends Shape implements Drawable {
    @Override
    public int area(Unit unit) { return compute(unit); }
    public Square() { new Canvas(); }
}
interface Drawable { void draw(); }
enum Color { RED }
record Pair(int a, int b) {}
""",
     {("Square", "class"), ("area", "method"), ("Square", "method"), ("Drawable", "interface"),
      ("draw", "method"), ("Color", "enum"), ("Pair", "class")},
     {("Shape", "class"), ("Drawable", "implementation"), ("Unit", "type"), ("compute", "call"),
      ("Canvas", "class")}),
    ("c", b"""\
#define LIMIT 10
struct point { int x; };
typedef struct { int w; } size_t2;
enum color { RED };
static int
compute(int x)
{
    return helper(x);
}
char **names(void) { return 0; }
int prototype(int);
""",
     {("LIMIT", "macro"), ("point", "struct"), ("size_t2", "type"), ("color", "enum"),
      ("compute", "function"), ("names", "function"), ("prototype", "function")},
     {("helper", "call")}),
    ("cpp", b"""\
namespace geo {
template <typename T>
class Shape : public Base {
 public:
  int area(int x) { return helper(x); }
  void draw();
};
}
void geo::Shape::draw() { auto c = new Canvas(); }
int helper(int x) { return x; }
""",
     {("geo", "module"), ("Shape", "class"), ("area", "method"), ("draw", "method"),
      ("helper", "function")},
     {("Base", "class"), ("helper", "call"), ("Canvas", "class")}),
    ("ruby", b"""\
module Shapes
  class Square < Base
    LIMIT = 3
    def area(side)
      compute(side)
      Canvas.new
    end
    def self.unit; end
  end
end
""",
     {("Shapes", "module"), ("Square", "class"), ("LIMIT", "constant"), ("area", "method"),
      ("unit", "method")},
     {("Base", "class"), ("compute", "call"), ("Canvas", "class"), ("new", "call")}),
    ("c_sharp", b"""\
namespace Shapes {
  [Serializable]
  public class Square : Shape, IDrawable {
    public int Area(Unit unit) { return Compute(unit); }
    public Square() { var c = new Canvas(); }
    public string Name { get; set; }
  }
  interface IDrawable { void Draw(); }
  struct Point {}
  enum Color { Red }
}
""",
     {("Shapes", "module"), ("Square", "class"), ("Area", "method"), ("Square", "method"),
      ("Name", "property"), ("IDrawable", "interface"), ("Draw", "method"), ("Point", "struct"),
      ("Color", "enum")},
     {("Shape", "class"), ("IDrawable", "class"), ("Unit", "type"), ("Compute", "call"),
      ("Canvas", "class")}),
]


def defs_of(tags):
    return {(t.name, t.category) for t in tags if t.kind == "def"}


def refs_of(tags):
    return {(t.name, t.category) for t in tags if t.kind == "ref"}


def by_name(tags, name, kind="def"):
    [tag] = [t for t in tags if t.name == name and t.kind == kind]
    return tag


def test_python_definitions_and_categories():
    tags = extract_tags("python", PYTHON)
    assert defs_of(tags) == {
        ("LIMIT", "constant"), ("Store", "class"), ("size", "method"), ("put", "method"),
        ("main", "function"), ("inner", "function"),
    }
    assert {("helper", "call"), ("Base", "class"), ("Cached", "class"), ("register", "call"),
            ("property", "call"), ("Counter", "type"), ("List", "type"), ("Item", "type"),
            ("Store", "call")} <= refs_of(tags)


def test_python_ranges_cover_decorators_and_bodies():
    tags = extract_tags("python", PYTHON)
    lines = PYTHON.decode().splitlines()
    store, size, put = by_name(tags, "Store"), by_name(tags, "size"), by_name(tags, "put")
    assert lines[store.line - 1] == "@register"  # decorated: the range starts at the decorator
    assert lines[store.end_line - 1].strip() == "self.size()"
    assert PYTHON[store.start_byte:store.end_byte].startswith(b"@register\nclass Store")
    assert lines[size.line - 1].strip() == "@property"
    # methods sit inside their class's range, which is how names get qualified
    for method in (size, put):
        assert store.start_byte < method.start_byte < method.end_byte <= store.end_byte
    main = by_name(tags, "main")
    assert PYTHON[main.start_byte:main.end_byte].rstrip().endswith(b"return Store()")


def test_python_signatures_stop_at_the_body():
    tags = extract_tags("python", PYTHON)
    assert by_name(tags, "Store").signature == "class Store(Base, mixins.Cached):"
    assert by_name(tags, "size").signature == "def size(self) -> Counter:"  # no decorator
    assert by_name(tags, "put").signature == (
        "def put(self,\n            key: str,\n            value: List[Item]):"
    )
    assert by_name(tags, "LIMIT").signature == "LIMIT = 10"
    assert all(t.signature == "" for t in tags if t.kind == "ref")


def test_reference_ranges_are_the_name():
    tags = extract_tags("python", PYTHON)
    helper = by_name(tags, "helper", "ref")
    assert PYTHON[helper.start_byte:helper.end_byte] == b"helper"
    assert helper.line == helper.end_line == 11


@pytest.mark.parametrize("lang, source, want_defs, want_refs", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_language_tags(lang, source, want_defs, want_refs):
    tags = extract_tags(lang, source)
    assert defs_of(tags) == want_defs
    assert want_refs <= refs_of(tags)
    for tag in tags:
        assert isinstance(tag, Tag)
        assert 1 <= tag.line <= tag.end_line <= source.count(b"\n") + 1
        assert 0 <= tag.start_byte < tag.end_byte <= len(source)
        if tag.kind == "def":
            assert tag.name.encode() in source[tag.start_byte:tag.end_byte]
            assert tag.signature and tag.name in tag.signature
        else:
            assert source[tag.start_byte:tag.end_byte] == tag.name.encode()


def test_signatures_in_brace_languages():
    go = extract_tags("go", SAMPLES[2][1])
    assert ("Area", "func (s *Square) Area() int") in {(t.name, t.signature) for t in go}
    c = extract_tags("c", SAMPLES[5][1])
    assert by_name(c, "compute").signature == "static int\ncompute(int x)"
    java = extract_tags("java", SAMPLES[4][1])
    # annotations are left out of the signature but inside the range
    area = by_name(java, "area")
    assert area.signature == "public int area(Unit unit)"
    assert SAMPLES[4][1][area.start_byte:].startswith(b"@Override")
    cpp = extract_tags("cpp", SAMPLES[6][1])
    assert by_name(cpp, "Shape").signature == "template <typename T>\nclass Shape : public Base"


def test_members_are_contained_in_their_type():
    for lang, source, container, category, member in [
        ("java", SAMPLES[4][1], "Square", "class", "area"),
        ("c_sharp", SAMPLES[8][1], "IDrawable", "interface", "Draw"),
        ("ruby", SAMPLES[7][1], "Square", "class", "area"),
        ("typescript", SAMPLES[1][1], "Widget", "class", "render"),
        ("rust", SAMPLES[3][1], "Point", "impl", "new"),
    ]:
        tags = extract_tags(lang, source)
        inner = by_name(tags, member)
        outers = [t for t in tags if t.name == container and t.category == category]
        assert any(o.start_byte < inner.start_byte and inner.end_byte <= o.end_byte for o in outers), lang


def test_tsx_and_every_language_query_compiles():
    tsx = extract_tags("tsx", b"export function App(): Element { return <div>{render()}</div>; }\n")
    assert ("App", "function") in defs_of(tsx)
    assert ("render", "call") in refs_of(tsx)
    for path in ["a.py", "a.js", "a.ts", "a.tsx", "a.go", "a.rs", "a.java", "a.c", "a.cpp", "a.rb", "a.cs"]:
        assert query(language_for(path)).pattern_count > 0


def test_broken_source_still_yields_the_intact_definitions():
    tags = extract_tags("python", b"def ok(a):\n    return a\n\ndef broken(:\n")
    assert ("ok", "function") in defs_of(tags)
    assert extract_tags("python", b"") == []
