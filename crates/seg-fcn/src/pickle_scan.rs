//! A dry run of one pickle before candle's reader builds it. candle's reader materialises every
//! object, clones whatever a memo get names, and drops nested objects recursively: a crafted
//! pickle of a few kilobytes can ask for exabytes (a tuple of two gets of the previous tuple,
//! sixty times over) or nest deeply enough to overflow the stack when dropped, and an opcode it
//! does not know stops it with a bare number. The dry run follows the same stack machine over
//! sizes instead of objects, so such a file is refused with a reason before anything is built.
//!
//! It reads the opcodes candle reads (protocol 2, what `torch.save` writes by default) and
//! names any other with its protocol.

/// Deepest nesting of containers a state_dict file may have (a real one has under ten levels).
pub(crate) const MAX_DEPTH: u32 = 256;
/// Most bytes the objects built from one pickle may take, clones of memo entries included.
pub(crate) const MAX_BYTES: u64 = 512 << 20;

/// Bytes charged for one object besides its text (about the size of candle's `Object`).
const NODE: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mark,
    List,
    Dict,
    /// A `collections.OrderedDict` or `defaultdict` class, which candle's reduce turns into a
    /// dict.
    DictClass,
    Other,
}

/// What the dry run knows of an object: its kind, the bytes it takes, its nesting depth.
#[derive(Debug, Clone, Copy)]
struct Value {
    kind: Kind,
    bytes: u64,
    depth: u32,
}

impl Value {
    fn leaf(kind: Kind, text: usize) -> Self {
        Value {
            kind,
            bytes: NODE + text as u64,
            depth: 1,
        }
    }

    /// A container of `kind` holding `children`.
    fn of(kind: Kind, children: &[Value]) -> Self {
        Value {
            kind,
            bytes: children.iter().fold(NODE, |b, c| b.saturating_add(c.bytes)),
            depth: 1 + children.iter().map(|c| c.depth).max().unwrap_or(0),
        }
    }

    /// This container with `more` added to it.
    fn with(self, more: &[Value]) -> Self {
        let added = Value::of(self.kind, more);
        Value {
            kind: self.kind,
            bytes: self.bytes.saturating_add(added.bytes - NODE),
            depth: self.depth.max(added.depth),
        }
    }
}

/// The opcodes of pickle protocols 0-5 that candle's reader does not read, by name and the
/// protocol that introduced them.
fn unread_opcode(op: u8) -> Option<(&'static str, u8)> {
    Some(match op {
        b'I' => ("INT", 0),
        b'L' => ("LONG", 0),
        b'S' => ("STRING, a Python 2 byte string", 0),
        b'V' => ("UNICODE", 0),
        b'F' => ("FLOAT", 0),
        b'l' => ("LIST", 0),
        b'0' => ("POP", 0),
        b'1' => ("POP_MARK", 1),
        b'2' => ("DUP", 0),
        b'g' => ("GET", 0),
        b'p' => ("PUT", 0),
        b'i' => ("INST", 0),
        b'o' => ("OBJ", 1),
        b'P' => ("PERSID", 0),
        b'T' => ("BINSTRING, a Python 2 byte string", 1),
        b'U' => ("SHORT_BINSTRING, a Python 2 byte string", 1),
        0x82 => ("EXT1", 2),
        0x83 => ("EXT2", 2),
        0x84 => ("EXT4", 2),
        0x8b => ("LONG4", 2),
        b'B' => ("BINBYTES", 3),
        b'C' => ("SHORT_BINBYTES", 3),
        0x8c => ("SHORT_BINUNICODE", 4),
        0x8d => ("BINUNICODE8", 4),
        0x8e => ("BINBYTES8", 4),
        0x8f => ("EMPTY_SET", 4),
        0x90 => ("ADDITEMS", 4),
        0x91 => ("FROZENSET", 4),
        0x92 => ("NEWOBJ_EX", 4),
        0x93 => ("STACK_GLOBAL", 4),
        0x94 => ("MEMOIZE", 4),
        0x95 => ("FRAME", 4),
        0x96 => ("BYTEARRAY8", 5),
        0x97 => ("NEXT_BUFFER", 5),
        0x98 => ("READONLY_BUFFER", 5),
        _ => return None,
    })
}

/// `v`, if it nests no deeper than [`MAX_DEPTH`].
fn shallow(v: Value) -> Result<Value, String> {
    if v.depth > MAX_DEPTH {
        return Err(format!(
            "its objects nest over {MAX_DEPTH} levels deep: not a state_dict"
        ));
    }
    Ok(v)
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: std::collections::HashMap<u32, Value>,
    /// Bytes of every object built so far, clones included.
    spent: u64,
    protocol: Option<u8>,
    /// Where `bytes` starts in its file, for messages.
    base: usize,
    /// Offsets of LONG1 opcodes of more than 8 bytes.
    wide_longs: Vec<usize>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "the pickle ends inside an argument at byte {} ({n} bytes wanted, {} left)",
                self.base + self.pos,
                self.bytes.len() - self.pos
            ));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.bytes[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(format!(
                "the pickle ends inside a GLOBAL name at byte {}",
                self.base + self.pos
            ));
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    /// Charges `v`'s bytes (a new object or a clone) and checks its depth.
    fn built(&mut self, v: Value) -> Result<Value, String> {
        self.spent = self.spent.saturating_add(v.bytes);
        if self.spent > MAX_BYTES {
            return Err(format!(
                "reading it would build over {} MiB of objects (a very large pickle, or memo entries copied into one another): save the state_dict alone (`torch.save(model.state_dict(), …)`)",
                MAX_BYTES >> 20
            ));
        }
        shallow(v)
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        let v = self.built(v)?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self, op: &str) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| format!("{op} at byte {} finds the stack empty", self.base + self.pos - 1))
    }

    fn pop_to_mark(&mut self, op: &str) -> Result<Vec<Value>, String> {
        let Some(at) = self.stack.iter().rposition(|v| v.kind == Kind::Mark) else {
            return Err(format!("{op} at byte {} finds no MARK", self.base + self.pos - 1));
        };
        let out = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(out)
    }

    /// Adds `items` to the container on top of the stack, which must be of `kind`.
    fn extend_top(&mut self, kind: Kind, items: &[Value], op: &str) -> Result<(), String> {
        let at = self.base + self.pos - 1;
        let top = self
            .stack
            .last()
            .copied()
            .ok_or_else(|| format!("{op} at byte {at} finds the stack empty"))?;
        if top.kind != kind {
            let want = if kind == Kind::List { "a list" } else { "a dict" };
            return Err(format!("{op} at byte {at} adds to something that is not {want}"));
        }
        // The items moved in; only the depth can pass a limit here.
        *self.stack.last_mut().expect("checked above") = shallow(top.with(items))?;
        Ok(())
    }

    fn step(&mut self) -> Result<bool, String> {
        let at = self.base + self.pos;
        let op = *self
            .take(1)
            .map_err(|_| format!("the pickle ends at byte {at} without its STOP opcode"))?
            .first()
            .expect("one byte taken");
        match op {
            0x80 => {
                self.protocol = Some(self.take(1)?[0]);
            }
            b'c' => {
                // candle drops a `\r` before each newline, and reads the names lossily: every
                // byte that is not UTF-8 becomes a 3-byte U+FFFD.
                let name = |l: &'a [u8]| l.strip_suffix(b"\r").unwrap_or(l);
                let module = name(self.line()?);
                let class = name(self.line()?);
                let kind = if module == b"collections" && (class == b"OrderedDict" || class == b"defaultdict") {
                    Kind::DictClass
                } else {
                    Kind::Other
                };
                self.push(Value::leaf(kind, 3 * (module.len() + class.len())))?;
            }
            b'K' => {
                self.take(1)?;
                self.push(Value::leaf(Kind::Other, 0))?;
            }
            b'M' => {
                self.take(2)?;
                self.push(Value::leaf(Kind::Other, 0))?;
            }
            b'J' => {
                self.take(4)?;
                self.push(Value::leaf(Kind::Other, 0))?;
            }
            b'G' => {
                self.take(8)?;
                self.push(Value::leaf(Kind::Other, 0))?;
            }
            0x8a => {
                let n = self.take(1)?[0] as usize;
                self.take(n)?;
                // candle shifts each byte into an i64: past 8 bytes the shift overflows (a
                // panic with overflow checks). Mended below into an equal-length int.
                if n > 8 {
                    self.wide_longs.push(at - self.base);
                }
                self.push(Value::leaf(Kind::Other, 0))?;
            }
            b'X' => {
                let n = self.u32()?;
                let text = self.take(n as usize)?;
                if std::str::from_utf8(text).is_err() {
                    return Err(format!("the string at byte {at} is not UTF-8"));
                }
                self.push(Value::leaf(Kind::Other, text.len()))?;
            }
            b'(' => self.push(Value::leaf(Kind::Mark, 0))?,
            b'N' | 0x88 | 0x89 | b')' => self.push(Value::leaf(Kind::Other, 0))?,
            b']' => self.push(Value::leaf(Kind::List, 0))?,
            b'}' => self.push(Value::leaf(Kind::Dict, 0))?,
            b'Q' => {
                let id = self.pop("BINPERSID")?;
                self.push(Value::of(Kind::Other, &[id]))?;
            }
            b't' => {
                let items = self.pop_to_mark("TUPLE")?;
                self.push(Value::of(Kind::Other, &items))?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop("TUPLE1-3")?);
                }
                self.push(Value::of(Kind::Other, &items))?;
            }
            b'a' => {
                let v = self.pop("APPEND")?;
                self.extend_top(Kind::List, &[v], "APPEND")?;
            }
            b'e' => {
                let items = self.pop_to_mark("APPENDS")?;
                self.extend_top(Kind::List, &items, "APPENDS")?;
            }
            b's' => {
                let v = self.pop("SETITEM")?;
                let k = self.pop("SETITEM")?;
                self.extend_top(Kind::Dict, &[k, v], "SETITEM")?;
            }
            b'u' => {
                let items = self.pop_to_mark("SETITEMS")?;
                if items.len() % 2 != 0 {
                    return Err(format!("SETITEMS at byte {at} has a key without a value"));
                }
                self.extend_top(Kind::Dict, &items, "SETITEMS")?;
            }
            // candle reads DICT as EMPTY_DICT (the MARK and the items stay on the stack).
            b'd' => self.push(Value::leaf(Kind::Dict, 0))?,
            b'b' => {
                let args = self.pop("BUILD")?;
                let obj = self.pop("BUILD")?;
                let kind = if obj.kind == Kind::Dict && args.kind == Kind::Dict {
                    Kind::Dict
                } else {
                    Kind::Other
                };
                self.push(Value::of(kind, &[obj, args]))?;
            }
            b'R' | 0x81 => {
                let args = self.pop("REDUCE")?;
                let callable = self.pop("REDUCE")?;
                if op == b'R' && callable.kind == Kind::DictClass {
                    self.push(Value::leaf(Kind::Dict, 0))?;
                } else {
                    self.push(Value::of(Kind::Other, &[callable, args]))?;
                }
            }
            b'h' | b'j' => {
                let id = if op == b'h' {
                    self.take(1)?[0] as u32
                } else {
                    self.u32()?
                };
                let v = *self
                    .memo
                    .get(&id)
                    .ok_or_else(|| format!("memo entry {id} read at byte {at} was never written"))?;
                self.push(v)?;
            }
            b'q' | b'r' => {
                let id = if op == b'q' {
                    self.take(1)?[0] as u32
                } else {
                    self.u32()?
                };
                let top = *self.stack.last().ok_or_else(|| {
                    let name = if op == b'q' { "BINPUT" } else { "LONG_BINPUT" };
                    format!("{name} at byte {at} finds the stack empty")
                })?;
                let v = self.built(top)?;
                self.memo.insert(id, v);
            }
            b'.' => return Ok(true),
            other => {
                let declared = self
                    .protocol
                    .map(|p| format!("it declares pickle protocol {p}"))
                    .unwrap_or_else(|| "it declares no protocol".into());
                return Err(match unread_opcode(other) {
                    Some((name, since)) => format!(
                        "opcode {name} (pickle protocol {since}) at byte {at} is not read ({declared}): \
                         save the weights with torch.save's default protocol 2 from Python 3"
                    ),
                    None => format!("byte {other:#04x} at {at} is no pickle opcode ({declared}): not a PyTorch file, or a damaged one"),
                });
            }
        }
        Ok(false)
    }
}

/// Dry-runs the pickle at the start of `bytes` (at byte `base` of its file, for messages),
/// returning its length through its STOP opcode, or why candle's reader must not be given it.
/// A LONG1 integer of more than 8 bytes (a 64-bit seed beside a checkpoint's state_dict) is
/// mended in place into an int of the same length, 0, which candle reads without overflowing:
/// no tensor's size, stride or offset is that large.
pub(crate) fn check(bytes: &mut [u8], base: usize) -> Result<usize, String> {
    let (len, wide) = {
        let mut m = Machine {
            bytes: &*bytes,
            pos: 0,
            stack: Vec::new(),
            memo: std::collections::HashMap::new(),
            spent: 0,
            protocol: None,
            base,
            wide_longs: Vec::new(),
        };
        while !m.step()? {}
        (m.pos, m.wide_longs)
    };
    for at in wide {
        // LONG1, its length n, n bytes: BININT1 0 or BININT2 0 (as n is even or odd), then
        // PROTO 2 pairs, which push nothing.
        let total = 2 + bytes[at + 1] as usize;
        let push: &[u8] = if total.is_multiple_of(2) {
            &[b'K', 0]
        } else {
            &[b'M', 0, 0]
        };
        let span = &mut bytes[at..at + total];
        span[..push.len()].copy_from_slice(push);
        for pair in span[push.len()..].chunks_exact_mut(2) {
            pair.copy_from_slice(&[0x80, 2]);
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    fn scan(bytes: &[u8]) -> Result<usize, String> {
        super::check(&mut bytes.to_vec(), 0)
    }

    fn read(bytes: &[u8]) -> candle_core::Result<candle_core::pickle::Object> {
        let mut stack = candle_core::pickle::Stack::empty();
        stack.read_loop(&mut std::io::Cursor::new(bytes))?;
        stack.finalize()
    }

    /// `{"a.weight": [1, 2.5, True], "b": ("x", None)}` as protocol 2 writes it, with memo puts
    /// and a get; an OrderedDict reduced and built.
    #[test]
    fn what_candle_reads_passes_whole() {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', b'X'];
        p.extend(8u32.to_le_bytes());
        p.extend(b"a.weight");
        p.extend([b'q', 1, b']', b'q', 2, b'(', b'K', 1, b'G']);
        p.extend(2.5f64.to_be_bytes());
        p.extend([0x88, b'e', b'X']);
        p.extend(1u32.to_le_bytes());
        p.extend(b"b");
        p.extend([b'X']);
        p.extend(1u32.to_le_bytes());
        p.extend(b"x");
        p.extend([b'N', 0x86, b'u', b'c']);
        p.extend(b"collections\nOrderedDict\n");
        p.extend([b')', b'R', b'}', b'b', b'h', 1, 0x86, b'.']);
        let n = scan(&p).unwrap();
        assert_eq!(n, p.len());
        read(&p).unwrap();
        // Bytes after STOP are not the pickle's.
        p.extend(b"rest");
        assert_eq!(scan(&p).unwrap(), n);
    }

    #[test]
    fn nesting_and_memo_copies_beyond_any_state_dict_are_refused() {
        // Lists nested a million deep: candle builds them, then overflows the stack dropping
        // them.
        let depth = 1_000_000;
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', depth));
        p.extend(std::iter::repeat_n(b'a', depth - 1));
        p.push(b'.');
        let e = scan(&p).unwrap_err();
        assert!(e.contains("nest over 256 levels"), "{e}");
        // Each tuple holds two copies of the previous one: 2^60 objects from 300 bytes.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            p.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        let e = scan(&p).unwrap_err();
        assert!(e.contains("build over 512 MiB of objects"), "{e}");
    }

    /// What candle reads otherwise than Python: DICT as EMPTY_DICT, LONG1 past 8 bytes (whose
    /// shift overflows: mended), GLOBAL names lossily (each non-UTF-8 byte three bytes).
    #[test]
    fn candles_own_readings_are_followed() {
        let p = [0x80, 2, b'(', b'K', 1, b'd', b'.'];
        assert_eq!(scan(&p).unwrap(), p.len());
        read(&p).unwrap();
        for n in [9u8, 10, 200] {
            let mut p = vec![0x80, 2, b'}', b'X'];
            p.extend(4u32.to_le_bytes());
            p.extend(b"seed");
            p.extend([0x8a, n]);
            p.extend(std::iter::repeat_n(0xff, n as usize));
            p.extend([b's', b'.']);
            let len = p.len();
            assert_eq!(super::check(&mut p, 0).unwrap(), len, "{n}");
            assert_eq!(p.len(), len);
            let obj = read(&p).unwrap();
            assert_eq!(
                obj,
                candle_core::pickle::Object::Dict(vec![(
                    candle_core::pickle::Object::Unicode("seed".into()),
                    candle_core::pickle::Object::Int(0)
                )]),
                "{n}"
            );
        }
        // 100 MiB of 0xff as a class name would be 300 MiB read, twice with its memo copy.
        let mut p = vec![0x80, 2, b'c'];
        p.extend(std::iter::repeat_n(0xff, 100 << 20));
        p.extend(b"\nx\n");
        p.extend([b'q', 0, b'.']);
        let e = scan(&p).unwrap_err();
        assert!(e.contains("512 MiB"), "{e}");
        // Names written with `\r\n` are candle's names without the `\r`.
        let mut p = vec![0x80, 2, b'c'];
        p.extend(b"collections\r\nOrderedDict\r\n");
        p.extend([b')', b'R', b'K', 1, b'K', 2, b's', b'.']);
        scan(&p).unwrap();
        read(&p).unwrap();
    }

    #[test]
    fn opcodes_candle_does_not_read_are_named_with_their_protocol() {
        let e = scan(&[0x80, 4, 0x95, 9, 0, 0, 0, 0, 0, 0, 0, b'.']).unwrap_err();
        assert!(
            e.contains("FRAME (pickle protocol 4)") && e.contains("declares pickle protocol 4"),
            "{e}"
        );
        let e = scan(&[0x80, 2, b'U', 1, b'x', b'.']).unwrap_err();
        assert!(e.contains("Python 2 byte string"), "{e}");
        let e = scan(&[0x80, 2, 0xff]).unwrap_err();
        assert!(e.contains("0xff") && e.contains("no pickle opcode"), "{e}");
    }

    #[test]
    fn malformed_pickles_say_where() {
        for (p, want) in [
            (
                &[0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a'][..],
                "ends inside an argument",
            ),
            (&[0x80, 2, b']'][..], "without its STOP"),
            (&[0x80, 2, b'h', 3, b'.'][..], "memo entry 3"),
            (
                &[0x80, 2, b'K', 1, b'a', b'.'][..],
                "APPEND at byte 4 finds the stack empty",
            ),
            (&[0x80, 2, b'}', b'K', 1, b'a', b'.'][..], "not a list"),
            (&[0x80, 2, b']', b'K', 1, b'K', 2, b's', b'.'][..], "not a dict"),
            (&[0x80, 2, b't', b'.'][..], "no MARK"),
            (&[0x80, 2, b'c', b'o', b's'][..], "GLOBAL name"),
        ] {
            let e = scan(p).unwrap_err();
            assert!(e.contains(want), "{p:?}: {e}");
        }
    }
}
