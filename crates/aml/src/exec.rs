//! Loading and evaluation: one recursive-descent executor for table loads (the table's term
//! list, run once at the root) and method calls (a method's term list, with locals and
//! arguments; the objects it creates are removed when it returns).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::namespace::{
    BufferFieldUnit, Field, FieldKind, FieldUnit, MethodBody, NameString, Namespace, NodeId,
    ObjectKind, ROOT,
};
use crate::{Error, Space, Value};

/// What the interpreter needs from the kernel: region accesses, notifications, time.
pub trait Host {
    /// Reads `width` bytes (1, 2, 4 or 8) at `address` of `space`.
    fn read(&mut self, space: Space, address: u64, width: u8) -> Result<u64, Error>;
    /// Writes `width` bytes at `address` of `space`.
    fn write(&mut self, space: Space, address: u64, width: u8, value: u64) -> Result<(), Error>;
    /// `Notify(device, value)`: the device's absolute path and the notification value.
    fn notify(&mut self, path: &str, value: u64);
    /// `Sleep(ms)`: may give up the CPU.
    fn sleep(&mut self, _milliseconds: u64) {}
    /// `Stall(us)`: busy-waits.
    fn stall(&mut self, _microseconds: u64) {}
    /// `Timer`: a monotonic count of 100 ns units.
    fn timer(&mut self) -> u64 {
        0
    }
    /// A value stored to `Debug`.
    fn debug(&mut self, _value: &Value) {}
}

/// Operations one evaluation (or one table load) may take before it is abandoned.
const BUDGET: u32 = 4_000_000;
/// Nesting of terms and expressions: each level is about 0.8 KiB of Rust stack (release), and
/// AML runs on 64 KiB kernel stacks. Firmware nests far less (QEMU: about 10).
const MAX_DEPTH: u32 = 40;
/// Nesting of method calls.
const MAX_CALLS: u32 = 16;

pub(crate) struct Cursor {
    data: Arc<[u8]>,
    pos: usize,
    end: usize,
}

impl Cursor {
    fn byte(&mut self) -> Result<u8, Error> {
        if self.pos >= self.end {
            return Err(Error::UnexpectedEnd);
        }
        let b = self.data[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Result<u8, Error> {
        if self.pos >= self.end {
            return Err(Error::UnexpectedEnd);
        }
        Ok(self.data[self.pos])
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        let at = self.pos + ahead;
        (at < self.end).then(|| self.data[at])
    }

    fn bytes(&mut self, count: usize) -> Result<&[u8], Error> {
        let end = self.pos.checked_add(count).ok_or(Error::UnexpectedEnd)?;
        if end > self.end {
            return Err(Error::UnexpectedEnd);
        }
        let start = self.pos;
        self.pos = end;
        Ok(&self.data[start..end])
    }

    fn le(&mut self, count: usize) -> Result<u64, Error> {
        let mut raw = [0u8; 8];
        raw[..count].copy_from_slice(self.bytes(count)?);
        Ok(u64::from_le_bytes(raw))
    }

    /// A PkgLength as a number (field widths use the same encoding).
    fn pkg_length_value(&mut self) -> Result<usize, Error> {
        let lead = self.byte()?;
        let follow = (lead >> 6) as usize;
        if follow == 0 {
            return Ok((lead & 0x3F) as usize);
        }
        let mut length = (lead & 0x0F) as usize;
        for index in 0..follow {
            length |= (self.byte()? as usize) << (4 + 8 * index);
        }
        Ok(length)
    }

    /// A PkgLength, returned as the absolute end of the package it measures.
    fn pkg_end(&mut self) -> Result<usize, Error> {
        let start = self.pos;
        let length = self.pkg_length_value()?;
        let end = start.checked_add(length).ok_or(Error::UnexpectedEnd)?;
        if end > self.end || end < self.pos {
            return Err(Error::UnexpectedEnd);
        }
        Ok(end)
    }

    fn name_segment(&mut self) -> Result<[u8; 4], Error> {
        let mut segment = [0u8; 4];
        segment.copy_from_slice(self.bytes(4)?);
        let lead_ok = segment[0] == b'_' || segment[0].is_ascii_uppercase();
        let rest_ok = segment[1..]
            .iter()
            .all(|&b| b == b'_' || b.is_ascii_uppercase() || b.is_ascii_digit());
        if !(lead_ok && rest_ok) {
            return Err(Error::BadOpcode {
                opcode: segment[0] as u16,
                offset: self.pos - 4,
            });
        }
        Ok(segment)
    }

    fn name_string(&mut self) -> Result<NameString, Error> {
        let mut name = NameString::default();
        match self.peek()? {
            b'\\' => {
                self.pos += 1;
                name.root = true;
            }
            b'^' => {
                while self.peek()? == b'^' {
                    self.pos += 1;
                    name.parents += 1;
                }
            }
            _ => {}
        }
        match self.peek()? {
            0x00 => self.pos += 1,
            0x2E => {
                self.pos += 1;
                name.push(self.name_segment()?)?;
                name.push(self.name_segment()?)?;
            }
            0x2F => {
                self.pos += 1;
                let count = self.byte()?;
                for _ in 0..count {
                    name.push(self.name_segment()?)?;
                }
            }
            _ => name.push(self.name_segment()?)?,
        }
        Ok(name)
    }
}

fn is_name_start(b: u8) -> bool {
    b == b'\\' || b == b'^' || b == b'_' || b == 0x2E || b == 0x2F || b.is_ascii_uppercase()
}

enum Flow {
    Normal,
    Return(Value),
    Break,
    Continue,
}

struct Frame {
    scope: NodeId,
    locals: [Value; 8],
    args: [Value; 7],
    /// Objects a method created (removed when it returns); empty while loading a table.
    created: Vec<NodeId>,
    in_method: bool,
    /// Scopes open while loading a table (each is a level of Rust recursion).
    nesting: u32,
}

impl Frame {
    fn new(scope: NodeId, in_method: bool) -> Frame {
        Frame {
            scope,
            locals: Default::default(),
            args: Default::default(),
            created: Vec::new(),
            in_method,
            nesting: 0,
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    Null,
    Debug,
    Local(usize),
    Arg(usize),
    Node(NodeId),
    Index(Box<Target>, usize),
}

pub(crate) struct Exec<'a> {
    ns: &'a mut Namespace,
    host: &'a mut dyn Host,
    budget: u32,
    depth: u32,
    calls: u32,
}

fn truth(value: bool, mask: u64) -> Value {
    Value::Integer(if value { mask } else { 0 })
}

impl<'a> Exec<'a> {
    pub(crate) fn new(ns: &'a mut Namespace, host: &'a mut dyn Host) -> Exec<'a> {
        Exec {
            ns,
            host,
            budget: BUDGET,
            depth: 0,
            calls: 0,
        }
    }

    fn tick(&mut self) -> Result<(), Error> {
        self.budget = self.budget.checked_sub(1).ok_or(Error::Timeout)?;
        Ok(())
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.tick()?;
        if self.depth >= MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        self.depth += 1;
        Ok(())
    }

    fn mask(&self) -> u64 {
        self.ns.integer_mask
    }

    /// Runs a table's term list at the root. Errors inside a scope, device or other package
    /// are recorded in `errors` and loading goes on after that package.
    pub(crate) fn load(&mut self, data: Arc<[u8]>, errors: &mut Vec<String>) -> Result<(), Error> {
        let end = data.len();
        let mut cursor = Cursor {
            data,
            pos: 36.min(end),
            end,
        };
        let mut frame = Frame::new(ROOT, false);
        self.load_list(&mut cursor, end, &mut frame, errors)
    }

    fn load_list(
        &mut self,
        c: &mut Cursor,
        end: usize,
        f: &mut Frame,
        errors: &mut Vec<String>,
    ) -> Result<(), Error> {
        while c.pos < end {
            self.budget = BUDGET;
            self.depth = 0;
            let start = c.pos;
            let op = c.peek()?;
            let ext = c.peek_at(1).unwrap_or(0);
            // A package at load time (a scope, device, ...) loads its own contents, so that an
            // error inside it loses only the rest of that package.
            if op == 0x10 || (op == 0x5B && matches!(ext, 0x82..=0x85)) {
                if f.nesting >= MAX_DEPTH {
                    return Err(Error::TooDeep);
                }
                c.pos += if op == 0x5B { 2 } else { 1 };
                let package_end = c.pkg_end()?;
                let saved_end = core::mem::replace(&mut c.end, package_end);
                match self.scope_head(c, op, ext, f) {
                    Ok(scope) => {
                        let saved = core::mem::replace(&mut f.scope, scope);
                        f.nesting += 1;
                        let inner = self.load_list(c, package_end, f, errors);
                        f.nesting -= 1;
                        f.scope = saved;
                        if let Err(error) = inner {
                            errors.push(alloc::format!("{}: {error}", self.ns.path(scope)));
                        }
                    }
                    Err(error) => errors.push(alloc::format!("offset {start:#x}: {error}")),
                }
                c.end = saved_end;
                c.pos = package_end;
                continue;
            }
            if let Err(error) = self.term(c, f) {
                return Err(match error {
                    Error::BadOpcode { opcode, .. } => Error::BadOpcode {
                        opcode,
                        offset: start,
                    },
                    other => other,
                });
            }
        }
        Ok(())
    }

    /// Parses the head of a scope-opening object (`Scope`, `Device`, `Processor`,
    /// `PowerResource`, `ThermalZone`), after its PkgLength, and returns its node.
    fn scope_head(
        &mut self,
        c: &mut Cursor,
        op: u8,
        ext: u8,
        f: &mut Frame,
    ) -> Result<NodeId, Error> {
        let name = c.name_string()?;
        if op == 0x10 {
            return match self.ns.lookup(f.scope, &name) {
                Some(node) => Ok(node),
                None => self.create(f, &name, ObjectKind::Scope),
            };
        }
        let kind = match ext {
            0x82 => ObjectKind::Device,
            0x83 => {
                c.bytes(6)?; // processor id, PBLK address, PBLK length
                ObjectKind::Processor
            }
            0x84 => {
                c.bytes(3)?; // system level, resource order
                ObjectKind::PowerResource
            }
            _ => ObjectKind::ThermalZone,
        };
        self.create(f, &name, kind)
    }

    /// Creates a named object relative to the frame's scope.
    fn create(
        &mut self,
        f: &mut Frame,
        name: &NameString,
        kind: ObjectKind,
    ) -> Result<NodeId, Error> {
        let count = name.segments().len();
        let last = *name
            .segments()
            .last()
            .ok_or(Error::Type("an object needs a name"))?;
        let parent = self
            .ns
            .lookup(f.scope, &name.truncated(count - 1))
            .ok_or_else(|| Error::NotFound(name.to_text()))?;
        let id = self.ns.add(parent, last, kind)?;
        if f.in_method {
            f.created.push(id);
        }
        Ok(id)
    }

    fn term_list(&mut self, c: &mut Cursor, end: usize, f: &mut Frame) -> Result<Flow, Error> {
        while c.pos < end {
            match self.term(c, f)? {
                Flow::Normal => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Normal)
    }

    fn term(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<Flow, Error> {
        self.enter()?;
        let result = self.term_inner(c, f);
        self.depth -= 1;
        result
    }

    fn term_inner(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<Flow, Error> {
        let start = c.pos;
        let op = c.peek()?;
        match op {
            0x10 => {
                c.pos += 1;
                let end = c.pkg_end()?;
                let scope = self.scope_head(c, 0x10, 0, f)?;
                let saved = core::mem::replace(&mut f.scope, scope);
                let flow = self.term_list(c, end, f);
                f.scope = saved;
                c.pos = end;
                flow
            }
            0x08 => {
                c.pos += 1;
                let name = c.name_string()?;
                if !f.in_method && matches!(c.peek()?, 0x11..=0x13) {
                    let start = c.pos;
                    c.pos += 1;
                    let end = c.pkg_end()?;
                    c.pos = end;
                    let body = MethodBody {
                        table: c.data.clone(),
                        start,
                        end,
                    };
                    let scope = f.scope;
                    self.create(f, &name, ObjectKind::Deferred { body, scope })?;
                    return Ok(Flow::Normal);
                }
                let value = self.eval(c, f)?;
                self.create(f, &name, ObjectKind::Name(value))?;
                Ok(Flow::Normal)
            }
            0x14 => {
                c.pos += 1;
                let end = c.pkg_end()?;
                let name = c.name_string()?;
                let flags = c.byte()?;
                let body = MethodBody {
                    table: c.data.clone(),
                    start: c.pos,
                    end,
                };
                c.pos = end;
                self.create(
                    f,
                    &name,
                    ObjectKind::Method {
                        arguments: flags & 0x07,
                        serialized: flags & 0x08 != 0,
                        body,
                    },
                )?;
                Ok(Flow::Normal)
            }
            0x06 => {
                c.pos += 1;
                let source = c.name_string()?;
                let alias = c.name_string()?;
                if let Some(target) = self.ns.lookup(f.scope, &source) {
                    self.create(f, &alias, ObjectKind::Alias(target))?;
                }
                Ok(Flow::Normal)
            }
            0x15 => {
                c.pos += 1;
                c.name_string()?;
                c.bytes(2)?; // object type, argument count
                Ok(Flow::Normal)
            }
            0xA0 => {
                c.pos += 1;
                let end = c.pkg_end()?;
                let predicate = self.eval(c, f)?.as_integer()? != 0;
                let flow = if predicate {
                    self.term_list(c, end, f)?
                } else {
                    Flow::Normal
                };
                c.pos = end;
                if c.pos < c.end && c.peek()? == 0xA1 {
                    c.pos += 1;
                    let else_end = c.pkg_end()?;
                    if !predicate {
                        let flow = self.term_list(c, else_end, f)?;
                        c.pos = else_end;
                        return Ok(flow);
                    }
                    c.pos = else_end;
                }
                Ok(flow)
            }
            0xA1 => {
                c.pos += 1;
                c.pos = c.pkg_end()?;
                Ok(Flow::Normal)
            }
            0xA2 => {
                c.pos += 1;
                let end = c.pkg_end()?;
                let predicate_start = c.pos;
                loop {
                    self.tick()?;
                    c.pos = predicate_start;
                    if self.eval(c, f)?.as_integer()? == 0 {
                        break;
                    }
                    match self.term_list(c, end, f)? {
                        Flow::Break => break,
                        Flow::Return(value) => {
                            c.pos = end;
                            return Ok(Flow::Return(value));
                        }
                        Flow::Normal | Flow::Continue => {}
                    }
                }
                c.pos = end;
                Ok(Flow::Normal)
            }
            0xA4 => {
                c.pos += 1;
                let value = self.eval(c, f)?;
                Ok(Flow::Return(value))
            }
            0xA5 => {
                c.pos += 1;
                Ok(Flow::Break)
            }
            0x9F => {
                c.pos += 1;
                Ok(Flow::Continue)
            }
            0xA3 | 0xCC => {
                c.pos += 1;
                Ok(Flow::Normal)
            }
            0x86 => {
                c.pos += 1;
                let target = self.target(c, f)?;
                let value = self.eval(c, f)?.as_integer()?;
                match target {
                    Target::Node(node) => {
                        let path = self.ns.path(node);
                        self.host.notify(&path, value);
                        Ok(Flow::Normal)
                    }
                    _ => Err(Error::Type("Notify needs a named object")),
                }
            }
            0x8A..=0x8D | 0x8F => {
                c.pos += 1;
                let source = self.buffer_location(c, f)?;
                let index = self.eval(c, f)?.as_integer()?;
                let (bit_offset, bit_length) = match op {
                    0x8A => (index * 8, 32),
                    0x8B => (index * 8, 16),
                    0x8C => (index * 8, 8),
                    0x8D => (index, 1),
                    _ => (index * 8, 64),
                };
                let name = c.name_string()?;
                self.create_buffer_field(f, source, bit_offset, bit_length, &name)?;
                Ok(Flow::Normal)
            }
            0x5B => self.ext_term(c, f, start),
            _ => {
                self.eval(c, f)?;
                Ok(Flow::Normal)
            }
        }
    }

    fn ext_term(&mut self, c: &mut Cursor, f: &mut Frame, start: usize) -> Result<Flow, Error> {
        let ext = c.peek_at(1).ok_or(Error::UnexpectedEnd)?;
        match ext {
            0x82..=0x85 => {
                c.pos += 2;
                let end = c.pkg_end()?;
                let scope = self.scope_head(c, 0x5B, ext, f)?;
                let saved = core::mem::replace(&mut f.scope, scope);
                let flow = self.term_list(c, end, f);
                f.scope = saved;
                c.pos = end;
                flow
            }
            0x80 => {
                c.pos += 2;
                let name = c.name_string()?;
                let space = c.byte()?;
                let offset = self.eval(c, f)?.as_integer()?;
                let length = self.eval(c, f)?.as_integer()?;
                self.create(
                    f,
                    &name,
                    ObjectKind::Region {
                        space,
                        offset,
                        length,
                    },
                )?;
                Ok(Flow::Normal)
            }
            0x81 | 0x86 | 0x87 => {
                c.pos += 2;
                let end = c.pkg_end()?;
                let first = c.name_string()?;
                let first = self
                    .ns
                    .lookup(f.scope, &first)
                    .ok_or_else(|| Error::NotFound(first.to_text()))?;
                let kind = match ext {
                    0x81 => FieldKind::Region(first),
                    0x86 => {
                        let data = c.name_string()?;
                        let data = self
                            .ns
                            .lookup(f.scope, &data)
                            .ok_or_else(|| Error::NotFound(data.to_text()))?;
                        FieldKind::Index { index: first, data }
                    }
                    _ => {
                        let bank = c.name_string()?;
                        let bank = self
                            .ns
                            .lookup(f.scope, &bank)
                            .ok_or_else(|| Error::NotFound(bank.to_text()))?;
                        let value = self.eval(c, f)?.as_integer()?;
                        FieldKind::Bank {
                            region: first,
                            bank,
                            value,
                        }
                    }
                };
                let flags = c.byte()?;
                self.field_list(c, end, f, kind, flags)?;
                c.pos = end;
                Ok(Flow::Normal)
            }
            0x01 => {
                c.pos += 2;
                let name = c.name_string()?;
                c.byte()?;
                self.create(f, &name, ObjectKind::Mutex)?;
                Ok(Flow::Normal)
            }
            0x02 => {
                c.pos += 2;
                let name = c.name_string()?;
                self.create(f, &name, ObjectKind::Event)?;
                Ok(Flow::Normal)
            }
            0x13 => {
                c.pos += 2;
                let source = self.buffer_location(c, f)?;
                let bit_offset = self.eval(c, f)?.as_integer()?;
                let bit_length = self.eval(c, f)?.as_integer()?;
                let name = c.name_string()?;
                self.create_buffer_field(f, source, bit_offset, bit_length, &name)?;
                Ok(Flow::Normal)
            }
            0x21 | 0x22 => {
                c.pos += 2;
                let amount = self.eval(c, f)?.as_integer()?;
                if ext == 0x21 {
                    self.host.stall(amount.min(1_000_000));
                } else {
                    self.host.sleep(amount.min(60_000));
                }
                Ok(Flow::Normal)
            }
            0x24 | 0x26 | 0x27 => {
                // Signal, Reset, Release: one interpreter runs at a time, so mutexes and
                // events have nothing to do.
                c.pos += 2;
                self.target(c, f)?;
                Ok(Flow::Normal)
            }
            0x32 => {
                c.pos += 2;
                let kind = c.byte()?;
                let code = c.le(4)? as u32;
                let argument = self.eval(c, f)?.as_integer()?;
                Err(Error::Fatal {
                    kind,
                    code,
                    argument,
                })
            }
            0x20 | 0x1F => Err(Error::Unsupported("Load/LoadTable")),
            0x88 => Err(Error::Unsupported("DataTableRegion")),
            _ => {
                let _ = start;
                self.eval(c, f)?;
                Ok(Flow::Normal)
            }
        }
    }

    fn field_list(
        &mut self,
        c: &mut Cursor,
        end: usize,
        f: &mut Frame,
        kind: FieldKind,
        flags: u8,
    ) -> Result<(), Error> {
        let mut access = flags & 0x0F;
        let update_rule = (flags >> 5) & 0x03;
        let mut bit_offset: u64 = 0;
        while c.pos < end {
            match c.peek()? {
                0x00 => {
                    c.pos += 1;
                    bit_offset += c.pkg_length_value()? as u64;
                }
                0x01 => {
                    c.pos += 1;
                    access = c.byte()? & 0x0F;
                    c.byte()?;
                }
                0x03 => {
                    c.pos += 1;
                    access = c.byte()? & 0x0F;
                    c.bytes(2)?;
                }
                0x02 => return Err(Error::Unsupported("ConnectField")),
                _ => {
                    let segment = c.name_segment()?;
                    let bit_length = c.pkg_length_value()? as u64;
                    let field = Field {
                        kind: kind.clone(),
                        bit_offset,
                        bit_length,
                        access_bytes: access_bytes(access, bit_offset, bit_length),
                        update_rule,
                    };
                    let name = NameString::single(segment);
                    self.create(f, &name, ObjectKind::Field(FieldUnit(field)))?;
                    bit_offset += bit_length;
                }
            }
        }
        Ok(())
    }

    /// The source of `CreateXField`: a named buffer, or a local/argument (then a hidden named
    /// copy is what the field refers to, kept for the method's duration).
    fn buffer_location(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<NodeId, Error> {
        if is_name_start(c.peek()?) {
            let name = c.name_string()?;
            let node = self
                .ns
                .lookup(f.scope, &name)
                .ok_or_else(|| Error::NotFound(name.to_text()))?;
            self.materialize(node)?;
            return match self.ns.kind(node) {
                ObjectKind::Name(Value::Buffer(_)) => Ok(node),
                _ => Err(Error::Type("buffer field source must be a buffer")),
            };
        }
        let value = self.eval(c, f)?;
        let Value::Buffer(_) = value else {
            return Err(Error::Type("buffer field source must be a buffer"));
        };
        let hidden = NameString::single(*b"_T_B");
        // Unnamed temporaries: replace an earlier one of this frame.
        if let Some(old) = self.ns.child(f.scope, *b"_T_B") {
            self.ns.set_kind(old, ObjectKind::Name(value));
            return Ok(old);
        }
        self.create(f, &hidden, ObjectKind::Name(value))
    }

    fn create_buffer_field(
        &mut self,
        f: &mut Frame,
        buffer: NodeId,
        bit_offset: u64,
        bit_length: u64,
        name: &NameString,
    ) -> Result<(), Error> {
        let unit = BufferFieldUnit {
            buffer,
            bit_offset,
            bit_length,
        };
        self.create(f, name, ObjectKind::BufferField(unit))?;
        Ok(())
    }

    /// A SuperName or Target: where a result goes.
    fn target(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<Target, Error> {
        self.enter()?;
        let result = self.target_inner(c, f);
        self.depth -= 1;
        result
    }

    fn target_inner(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<Target, Error> {
        let op = c.peek()?;
        match op {
            0x00 => {
                c.pos += 1;
                Ok(Target::Null)
            }
            0x60..=0x67 => {
                c.pos += 1;
                Ok(Target::Local((op - 0x60) as usize))
            }
            0x68..=0x6E => {
                c.pos += 1;
                Ok(Target::Arg((op - 0x68) as usize))
            }
            0x5B if c.peek_at(1) == Some(0x31) => {
                c.pos += 2;
                Ok(Target::Debug)
            }
            0x88 => {
                c.pos += 1;
                let base = self.target(c, f)?;
                let index = self.eval(c, f)?.as_integer()? as usize;
                let _ = self.target(c, f)?;
                Ok(Target::Index(Box::new(base), index))
            }
            0x83 => {
                c.pos += 1;
                match self.eval(c, f)? {
                    Value::Reference(node) => Ok(Target::Node(node)),
                    Value::Name(path) => self
                        .ns
                        .find(&path)
                        .map(Target::Node)
                        .ok_or(Error::NotFound(path)),
                    _ => Err(Error::Type("DerefOf target is no reference")),
                }
            }
            _ if is_name_start(op) => {
                let name = c.name_string()?;
                self.ns
                    .lookup(f.scope, &name)
                    .map(Target::Node)
                    .ok_or_else(|| Error::NotFound(name.to_text()))
            }
            _ => Err(Error::BadOpcode {
                opcode: op as u16,
                offset: c.pos,
            }),
        }
    }

    fn read_target(&mut self, target: &Target, f: &mut Frame) -> Result<Value, Error> {
        match target {
            Target::Null | Target::Debug => Ok(Value::Uninitialized),
            Target::Local(n) => Ok(f.locals[*n].clone()),
            Target::Arg(n) => match &f.args[*n] {
                Value::Reference(node) => self.value_of(*node, Vec::new()),
                other => Ok(other.clone()),
            },
            Target::Node(node) => self.value_of(*node, Vec::new()),
            Target::Index(base, index) => {
                let base = self.read_target(base, f)?;
                index_of(&base, *index)
            }
        }
    }

    fn store(&mut self, target: &Target, value: Value, f: &mut Frame) -> Result<(), Error> {
        match target {
            Target::Null => Ok(()),
            Target::Debug => {
                self.host.debug(&value);
                Ok(())
            }
            Target::Local(n) => {
                f.locals[*n] = value;
                Ok(())
            }
            Target::Arg(n) => match f.args[*n].clone() {
                Value::Reference(node) => self.store_node(node, value),
                _ => {
                    f.args[*n] = value;
                    Ok(())
                }
            },
            Target::Node(node) => self.store_node(*node, value),
            Target::Index(base, index) => {
                let mut container = self.read_target(base, f)?;
                match &mut container {
                    Value::Buffer(bytes) => {
                        let slot = bytes.get_mut(*index).ok_or(Error::Index)?;
                        *slot = value.as_integer()? as u8;
                    }
                    Value::Package(elements) => {
                        *elements.get_mut(*index).ok_or(Error::Index)? = value;
                    }
                    _ => return Err(Error::Type("Index needs a buffer or package")),
                }
                self.store(base, container, f)
            }
        }
    }

    fn store_node(&mut self, node: NodeId, value: Value) -> Result<(), Error> {
        self.materialize(node)?;
        match self.ns.kind(node).clone() {
            ObjectKind::Name(old) => {
                let converted = match (&old, &value) {
                    (Value::Integer(_), Value::Buffer(_) | Value::String(_)) => {
                        Value::Integer(value.as_integer()? & self.mask())
                    }
                    _ => value,
                };
                self.ns.set_kind(node, ObjectKind::Name(converted));
                Ok(())
            }
            ObjectKind::Field(FieldUnit(field)) => self.write_field(&field, &value),
            ObjectKind::BufferField(unit) => {
                self.materialize(unit.buffer)?;
                let ObjectKind::Name(Value::Buffer(mut bytes)) = self.ns.kind(unit.buffer).clone()
                else {
                    return Err(Error::Type("buffer field over a non-buffer"));
                };
                let source = value_bytes(&value);
                copy_bits(&source, 0, &mut bytes, unit.bit_offset, unit.bit_length)?;
                self.ns
                    .set_kind(unit.buffer, ObjectKind::Name(Value::Buffer(bytes)));
                Ok(())
            }
            _ => Err(Error::Type("cannot store to this object")),
        }
    }

    /// Builds a deferred `Name`'s package or buffer (see [`ObjectKind::Deferred`]).
    fn materialize(&mut self, node: NodeId) -> Result<(), Error> {
        let ObjectKind::Deferred { body, scope } = self.ns.kind(node).clone() else {
            return Ok(());
        };
        let mut cursor = Cursor {
            data: body.table.clone(),
            pos: body.start,
            end: body.end,
        };
        let mut frame = Frame::new(scope, false);
        let value = self.eval(&mut cursor, &mut frame)?;
        self.ns.set_kind(node, ObjectKind::Name(value));
        Ok(())
    }

    /// The value of a named object: a method's result, a field's bits, a name's data, or a
    /// reference to a device, region or other object.
    pub(crate) fn value_of(&mut self, node: NodeId, args: Vec<Value>) -> Result<Value, Error> {
        self.materialize(node)?;
        match self.ns.kind(node).clone() {
            ObjectKind::Method { body, .. } => self.invoke(node, body, args),
            ObjectKind::Name(value) => Ok(value),
            ObjectKind::Field(FieldUnit(field)) => self.read_field(&field),
            ObjectKind::BufferField(unit) => {
                self.materialize(unit.buffer)?;
                let ObjectKind::Name(Value::Buffer(bytes)) = self.ns.kind(unit.buffer) else {
                    return Err(Error::Type("buffer field over a non-buffer"));
                };
                let mut out = vec![0u8; unit.bit_length.div_ceil(8) as usize];
                copy_bits(bytes, unit.bit_offset, &mut out, 0, unit.bit_length)?;
                Ok(bits_value(out, unit.bit_length))
            }
            ObjectKind::Alias(target) => {
                // `lookup` resolves alias chains; one left here is a loop or too long.
                match self.ns.kind(target) {
                    ObjectKind::Alias(_) => Err(Error::TooDeep),
                    _ => self.value_of(target, args),
                }
            }
            _ => Ok(Value::Reference(node)),
        }
    }

    fn invoke(&mut self, node: NodeId, body: MethodBody, args: Vec<Value>) -> Result<Value, Error> {
        if self.calls >= MAX_CALLS {
            return Err(Error::TooDeep);
        }
        self.calls += 1;
        let mut frame = Frame::new(node, true);
        for (slot, arg) in frame.args.iter_mut().zip(args) {
            *slot = arg;
        }
        let mut cursor = Cursor {
            data: body.table.clone(),
            pos: body.start,
            end: body.end,
        };
        let saved_depth = self.depth;
        let flow = self.term_list(&mut cursor, body.end, &mut frame);
        self.depth = saved_depth;
        for id in frame.created.drain(..).rev() {
            self.ns.remove(id);
        }
        self.calls -= 1;
        match flow? {
            Flow::Return(value) => Ok(value),
            _ => Ok(Value::Uninitialized),
        }
    }

    fn eval(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<Value, Error> {
        self.enter()?;
        let result = self.eval_inner(c, f);
        self.depth -= 1;
        result
    }

    fn int(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<u64, Error> {
        self.eval(c, f)?.as_integer()
    }

    fn eval_inner(&mut self, c: &mut Cursor, f: &mut Frame) -> Result<Value, Error> {
        let at = c.pos;
        let op = c.peek()?;
        if is_name_start(op) {
            let name = c.name_string()?;
            let node = self
                .ns
                .lookup(f.scope, &name)
                .ok_or_else(|| Error::NotFound(name.to_text()))?;
            let mut args = Vec::new();
            if let ObjectKind::Method { arguments, .. } = self.ns.kind(node) {
                for _ in 0..*arguments {
                    args.push(self.eval(c, f)?);
                }
            }
            return self.value_of(node, args);
        }
        c.pos += 1;
        let mask = self.mask();
        let value = match op {
            0x00 => Value::Integer(0),
            0x01 => Value::Integer(1),
            0xFF => Value::Integer(mask),
            0x0A => Value::Integer(c.le(1)?),
            0x0B => Value::Integer(c.le(2)?),
            0x0C => Value::Integer(c.le(4)?),
            0x0E => Value::Integer(c.le(8)? & mask),
            0x0D => {
                let mut text = String::new();
                loop {
                    let b = c.byte()?;
                    if b == 0 {
                        break;
                    }
                    text.push(b as char);
                }
                Value::String(text)
            }
            0x11 => {
                let end = c.pkg_end()?;
                let size = self.int(c, f)? as usize;
                if size > 1 << 20 {
                    return Err(Error::Type("buffer too large"));
                }
                let initial = c.bytes(end.saturating_sub(c.pos))?;
                let mut bytes = vec![0u8; size.max(initial.len())];
                bytes[..initial.len()].copy_from_slice(initial);
                c.pos = end;
                Value::Buffer(bytes)
            }
            0x12 | 0x13 => {
                let end = c.pkg_end()?;
                let count = if op == 0x12 {
                    c.byte()? as usize
                } else {
                    self.int(c, f)? as usize
                };
                if count > 1 << 16 {
                    return Err(Error::Type("package too large"));
                }
                let mut elements = Vec::with_capacity(count);
                while c.pos < end {
                    if is_name_start(c.peek()?) {
                        let name = c.name_string()?;
                        let text = match self.ns.lookup(f.scope, &name) {
                            Some(node) => self.ns.path(node),
                            None => name.to_text(),
                        };
                        elements.push(Value::Name(text));
                    } else {
                        elements.push(self.eval(c, f)?);
                    }
                }
                c.pos = end;
                if elements.len() < count {
                    elements.resize(count, Value::Uninitialized);
                }
                Value::Package(elements)
            }
            0x60..=0x67 => f.locals[(op - 0x60) as usize].clone(),
            0x68..=0x6E => f.args[(op - 0x68) as usize].clone(),
            0x70 => {
                let value = self.eval(c, f)?;
                let target = self.target(c, f)?;
                self.store(&target, value.clone(), f)?;
                value
            }
            0x71 => match self.target(c, f)? {
                Target::Node(node) => Value::Reference(node),
                _ => return Err(Error::Unsupported("RefOf a local")),
            },
            0x72 | 0x74 | 0x77 | 0x79 | 0x7A | 0x7B | 0x7C | 0x7D | 0x7E | 0x7F | 0x85 => {
                let a = self.int(c, f)?;
                let b = self.int(c, f)?;
                let result = match op {
                    0x72 => a.wrapping_add(b),
                    0x74 => a.wrapping_sub(b),
                    0x77 => a.wrapping_mul(b),
                    0x79 => a.checked_shl(b.min(64) as u32).unwrap_or(0),
                    0x7A => a.checked_shr(b.min(64) as u32).unwrap_or(0),
                    0x7B => a & b,
                    0x7C => !(a & b),
                    0x7D => a | b,
                    0x7E => !(a | b),
                    0x7F => a ^ b,
                    _ => a.checked_rem(b).ok_or(Error::DivideByZero)?,
                } & mask;
                let target = self.target(c, f)?;
                self.store(&target, Value::Integer(result), f)?;
                Value::Integer(result)
            }
            0x78 => {
                let a = self.int(c, f)?;
                let b = self.int(c, f)?;
                if b == 0 {
                    return Err(Error::DivideByZero);
                }
                let remainder = self.target(c, f)?;
                let quotient = self.target(c, f)?;
                self.store(&remainder, Value::Integer(a % b), f)?;
                self.store(&quotient, Value::Integer(a / b), f)?;
                Value::Integer(a / b)
            }
            0x73 => {
                let a = self.eval(c, f)?;
                let b = self.eval(c, f)?;
                let result = self.concat(a, b)?;
                let target = self.target(c, f)?;
                self.store(&target, result.clone(), f)?;
                result
            }
            0x84 => {
                let a = self.eval(c, f)?;
                let b = self.eval(c, f)?;
                let (Value::Buffer(a), Value::Buffer(b)) = (a, b) else {
                    return Err(Error::Type("ConcatenateResTemplate needs buffers"));
                };
                let mut joined = strip_end_tag(&a).to_vec();
                joined.extend_from_slice(strip_end_tag(&b));
                joined.extend_from_slice(&[0x79, 0x00]);
                let result = Value::Buffer(joined);
                let target = self.target(c, f)?;
                self.store(&target, result.clone(), f)?;
                result
            }
            0x75 | 0x76 => {
                let target = self.target(c, f)?;
                let old = self.read_target(&target, f)?.as_integer()?;
                let new = if op == 0x75 {
                    old.wrapping_add(1)
                } else {
                    old.wrapping_sub(1)
                } & mask;
                self.store(&target, Value::Integer(new), f)?;
                Value::Integer(new)
            }
            0x80..=0x82 => {
                let a = self.int(c, f)? & mask;
                let result = match op {
                    0x80 => !a & mask,
                    0x81 => 64 - a.leading_zeros() as u64,
                    _ => {
                        if a == 0 {
                            0
                        } else {
                            a.trailing_zeros() as u64 + 1
                        }
                    }
                };
                let target = self.target(c, f)?;
                self.store(&target, Value::Integer(result), f)?;
                Value::Integer(result)
            }
            0x83 => match self.eval(c, f)? {
                Value::Reference(node) => self.value_of(node, Vec::new())?,
                Value::Name(path) => {
                    let node = self.ns.find(&path).ok_or(Error::NotFound(path))?;
                    self.value_of(node, Vec::new())?
                }
                other => other,
            },
            0x87 => {
                let target = self.target(c, f)?;
                let value = self.read_target(&target, f)?;
                Value::Integer(match value {
                    Value::Buffer(bytes) => bytes.len() as u64,
                    Value::String(text) => text.len() as u64,
                    Value::Package(elements) => elements.len() as u64,
                    _ => return Err(Error::Type("SizeOf needs a buffer, string or package")),
                })
            }
            0x88 => {
                let source = self.eval(c, f)?;
                let index = self.int(c, f)? as usize;
                let element = index_of(&source, index)?;
                let target = self.target(c, f)?;
                self.store(&target, element.clone(), f)?;
                element
            }
            0x8E => {
                let target = self.target(c, f)?;
                if let Target::Node(node) = &target {
                    self.materialize(*node)?;
                }
                let code = match &target {
                    Target::Node(node) => match self.ns.kind(*node) {
                        ObjectKind::Name(value) => type_code(value),
                        ObjectKind::Field(_) => 5,
                        ObjectKind::Device => 6,
                        ObjectKind::Event => 7,
                        ObjectKind::Method { .. } => 8,
                        ObjectKind::Mutex => 9,
                        ObjectKind::Region { .. } => 10,
                        ObjectKind::PowerResource => 11,
                        ObjectKind::Processor => 12,
                        ObjectKind::ThermalZone => 13,
                        ObjectKind::BufferField(_) => 14,
                        _ => 0,
                    },
                    other => {
                        let value = self.read_target(other, f)?;
                        type_code(&value)
                    }
                };
                Value::Integer(code)
            }
            0x90 | 0x91 => {
                let a = self.int(c, f)? != 0;
                let b = self.int(c, f)? != 0;
                truth(if op == 0x90 { a && b } else { a || b }, mask)
            }
            0x92 => {
                let a = self.int(c, f)?;
                truth(a == 0, mask)
            }
            0x93..=0x95 => {
                let a = self.eval(c, f)?;
                let b = self.eval(c, f)?;
                let ordering = compare(&a, &b)?;
                truth(
                    match op {
                        0x93 => ordering.is_eq(),
                        0x94 => ordering.is_gt(),
                        _ => ordering.is_lt(),
                    },
                    mask,
                )
            }
            0x96 => {
                let value = self.eval(c, f)?;
                let result = Value::Buffer(match value {
                    Value::Integer(v) => {
                        let width = if mask == u64::MAX { 8 } else { 4 };
                        v.to_le_bytes()[..width].to_vec()
                    }
                    Value::String(text) => {
                        let mut bytes = text.into_bytes();
                        bytes.push(0);
                        bytes
                    }
                    Value::Buffer(bytes) => bytes,
                    _ => return Err(Error::Type("ToBuffer")),
                });
                let target = self.target(c, f)?;
                self.store(&target, result.clone(), f)?;
                result
            }
            0x97 | 0x98 => {
                let value = self.eval(c, f)?;
                let hex = op == 0x98;
                let text = match value {
                    Value::Integer(v) if hex => alloc::format!("0x{v:X}"),
                    Value::Integer(v) => v.to_string(),
                    Value::String(text) => text,
                    Value::Buffer(bytes) => {
                        let parts: Vec<String> = bytes
                            .iter()
                            .map(|b| {
                                if hex {
                                    alloc::format!("0x{b:02X}")
                                } else {
                                    b.to_string()
                                }
                            })
                            .collect();
                        parts.join(",")
                    }
                    _ => return Err(Error::Type("ToString")),
                };
                let result = Value::String(text);
                let target = self.target(c, f)?;
                self.store(&target, result.clone(), f)?;
                result
            }
            0x99 => {
                let value = self.eval(c, f)?.as_integer()? & mask;
                let target = self.target(c, f)?;
                self.store(&target, Value::Integer(value), f)?;
                Value::Integer(value)
            }
            0x9C => {
                let value = self.eval(c, f)?;
                let length = self.int(c, f)?;
                let Value::Buffer(bytes) = value else {
                    return Err(Error::Type("ToString needs a buffer"));
                };
                let text: String = bytes
                    .iter()
                    .take_while(|&&b| b != 0)
                    .take(length.min(bytes.len() as u64) as usize)
                    .map(|&b| b as char)
                    .collect();
                let result = Value::String(text);
                let target = self.target(c, f)?;
                self.store(&target, result.clone(), f)?;
                result
            }
            0x9D => {
                let value = self.eval(c, f)?;
                let target = self.target(c, f)?;
                match &target {
                    Target::Node(node) => {
                        self.ns.set_kind(*node, ObjectKind::Name(value.clone()));
                    }
                    other => self.store(other, value.clone(), f)?,
                }
                value
            }
            0x9E => {
                let value = self.eval(c, f)?;
                let index = self.int(c, f)? as usize;
                let length = self.int(c, f)? as usize;
                let result = match value {
                    Value::Buffer(bytes) => {
                        let start = index.min(bytes.len());
                        let end = start.saturating_add(length).min(bytes.len());
                        Value::Buffer(bytes[start..end].to_vec())
                    }
                    Value::String(text) => {
                        let start = index.min(text.len());
                        let end = start.saturating_add(length).min(text.len());
                        Value::String(text.get(start..end).unwrap_or("").into())
                    }
                    _ => return Err(Error::Type("Mid")),
                };
                let target = self.target(c, f)?;
                self.store(&target, result.clone(), f)?;
                result
            }
            0x89 => return Err(Error::Unsupported("Match")),
            0x5B => {
                let ext = c.byte()?;
                match ext {
                    0x12 => {
                        // CondRefOf: the name may not exist.
                        let exists = if is_name_start(c.peek()?) {
                            let name = c.name_string()?;
                            self.ns.lookup(f.scope, &name).map(Value::Reference)
                        } else {
                            let target = self.target(c, f)?;
                            Some(self.read_target(&target, f)?)
                        };
                        let target = self.target(c, f)?;
                        match exists {
                            Some(reference) => {
                                self.store(&target, reference, f)?;
                                truth(true, mask)
                            }
                            None => truth(false, mask),
                        }
                    }
                    0x23 => {
                        self.target(c, f)?;
                        c.le(2)?;
                        Value::Integer(0)
                    }
                    0x25 => {
                        self.target(c, f)?;
                        self.int(c, f)?;
                        Value::Integer(0)
                    }
                    0x30 => Value::Integer(0x2022_0331),
                    0x31 => Value::Uninitialized,
                    0x33 => Value::Integer(self.host.timer()),
                    0x28 | 0x29 => return Err(Error::Unsupported("BCD conversion")),
                    _ => {
                        c.pos = at;
                        self.ext_term(c, f, at)?;
                        Value::Uninitialized
                    }
                }
            }
            _ => {
                c.pos = at;
                // A statement or named object where a value was expected (rare, but legal in
                // a term list evaluated for effect).
                match op {
                    0x08 | 0x10 | 0x14 | 0x06 | 0x15 | 0x86 | 0x8A..=0x8D | 0x8F | 0xA0..=0xA5 => {
                        match self.term_inner(c, f)? {
                            Flow::Return(value) => value,
                            _ => Value::Uninitialized,
                        }
                    }
                    _ => {
                        return Err(Error::BadOpcode {
                            opcode: op as u16,
                            offset: at,
                        })
                    }
                }
            }
        };
        Ok(value)
    }

    fn concat(&self, a: Value, b: Value) -> Result<Value, Error> {
        let width = if self.mask() == u64::MAX { 8 } else { 4 };
        Ok(match a {
            Value::Integer(a) => {
                let mut bytes = a.to_le_bytes()[..width].to_vec();
                bytes.extend_from_slice(&b.as_integer()?.to_le_bytes()[..width]);
                Value::Buffer(bytes)
            }
            Value::String(mut text) => {
                match b {
                    Value::String(other) => text.push_str(&other),
                    Value::Integer(v) => text.push_str(&alloc::format!("{v:X}")),
                    Value::Buffer(bytes) => text.extend(bytes.iter().map(|&b| b as char)),
                    _ => return Err(Error::Type("Concatenate")),
                }
                Value::String(text)
            }
            Value::Buffer(mut bytes) => {
                match b {
                    Value::Integer(v) => bytes.extend_from_slice(&v.to_le_bytes()[..width]),
                    Value::String(text) => bytes.extend_from_slice(text.as_bytes()),
                    Value::Buffer(other) => bytes.extend_from_slice(&other),
                    _ => return Err(Error::Type("Concatenate")),
                }
                Value::Buffer(bytes)
            }
            _ => return Err(Error::Type("Concatenate")),
        })
    }

    /// Where an operation region is for the host: memory, I/O, or the PCI function whose
    /// `_ADR` its device has, on the bus its root bridge's `_BBN` names.
    fn region_space(&mut self, region: NodeId) -> Result<(Space, u64, u64), Error> {
        let ObjectKind::Region {
            space,
            offset,
            length,
        } = self.ns.kind(region).clone()
        else {
            return Err(Error::Type("field over a non-region"));
        };
        let space = match space {
            0 => Space::Memory,
            1 => Space::Io,
            2 => {
                let device = self.ns.parent(region).unwrap_or(ROOT);
                let adr = self.child_integer(device, *b"_ADR").unwrap_or(0);
                let mut bus = 0;
                let mut segment = 0;
                let mut cursor = Some(device);
                while let Some(node) = cursor {
                    if let Some(bbn) = self.child_integer(node, *b"_BBN") {
                        bus = bbn as u8;
                        segment = self.child_integer(node, *b"_SEG").unwrap_or(0) as u16;
                        break;
                    }
                    cursor = self.ns.parent(node);
                }
                Space::PciConfig {
                    segment,
                    bus,
                    device: (adr >> 16) as u8,
                    function: adr as u8,
                }
            }
            3 => return Err(Error::Unsupported("EmbeddedControl region")),
            5 => return Err(Error::Unsupported("SystemCMOS region")),
            _ => return Err(Error::Unsupported("region space")),
        };
        Ok((space, offset, length))
    }

    fn child_integer(&mut self, node: NodeId, name: [u8; 4]) -> Option<u64> {
        let child = self.ns.child(node, name)?;
        self.value_of(child, Vec::new()).ok()?.as_integer().ok()
    }

    fn read_unit(&mut self, field: &Field, byte_offset: u64, width: u8) -> Result<u64, Error> {
        match &field.kind {
            FieldKind::Region(region) => {
                let (space, base, length) = self.region_space(*region)?;
                if byte_offset + width as u64 > length.max(width as u64) {
                    return Err(Error::Index);
                }
                self.host.read(space, base + byte_offset, width)
            }
            FieldKind::Index { index, data } => {
                self.store_node(*index, Value::Integer(byte_offset))?;
                self.value_of(*data, Vec::new())?.as_integer()
            }
            FieldKind::Bank {
                region,
                bank,
                value,
            } => {
                self.store_node(*bank, Value::Integer(*value))?;
                let (space, base, _) = self.region_space(*region)?;
                self.host.read(space, base + byte_offset, width)
            }
        }
    }

    fn write_unit(
        &mut self,
        field: &Field,
        byte_offset: u64,
        width: u8,
        value: u64,
    ) -> Result<(), Error> {
        match &field.kind {
            FieldKind::Region(region) => {
                let (space, base, length) = self.region_space(*region)?;
                if byte_offset + width as u64 > length.max(width as u64) {
                    return Err(Error::Index);
                }
                self.host.write(space, base + byte_offset, width, value)
            }
            FieldKind::Index { index, data } => {
                self.store_node(*index, Value::Integer(byte_offset))?;
                self.store_node(*data, Value::Integer(value))
            }
            FieldKind::Bank {
                region,
                bank,
                value: bank_value,
            } => {
                self.store_node(*bank, Value::Integer(*bank_value))?;
                let (space, base, _) = self.region_space(*region)?;
                self.host.write(space, base + byte_offset, width, value)
            }
        }
    }

    fn read_field(&mut self, field: &Field) -> Result<Value, Error> {
        let width = field.access_bytes;
        let unit_bits = width as u64 * 8;
        let mut out = vec![0u8; field.bit_length.div_ceil(8) as usize];
        let mut done = 0;
        while done < field.bit_length {
            self.tick()?;
            let absolute = field.bit_offset + done;
            let unit = absolute / unit_bits;
            let shift = absolute % unit_bits;
            let take = (unit_bits - shift).min(field.bit_length - done);
            let raw = self.read_unit(field, unit * width as u64, width)?;
            let bits = (raw >> shift) & low_mask(take);
            copy_bits(&bits.to_le_bytes(), 0, &mut out, done, take)?;
            done += take;
        }
        Ok(bits_value(out, field.bit_length))
    }

    fn write_field(&mut self, field: &Field, value: &Value) -> Result<(), Error> {
        let source = value_bytes(value);
        let width = field.access_bytes;
        let unit_bits = width as u64 * 8;
        let mut done = 0;
        while done < field.bit_length {
            self.tick()?;
            let absolute = field.bit_offset + done;
            let unit = absolute / unit_bits;
            let shift = absolute % unit_bits;
            let take = (unit_bits - shift).min(field.bit_length - done);
            let mut chunk = [0u8; 8];
            copy_bits(&source, done, &mut chunk, 0, take)?;
            let bits = u64::from_le_bytes(chunk) & low_mask(take);
            let unit_mask = low_mask(take) << shift;
            let others = if take == unit_bits {
                0
            } else {
                match field.update_rule {
                    0 => self.read_unit(field, unit * width as u64, width)?,
                    1 => u64::MAX,
                    _ => 0,
                }
            };
            let combined = (others & !unit_mask & low_mask(unit_bits)) | (bits << shift);
            self.write_unit(field, unit * width as u64, width, combined)?;
            done += take;
        }
        Ok(())
    }
}

fn low_mask(bits: u64) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The access width in bytes for a field's access type. `AnyAcc` takes the widest naturally
/// aligned unit (up to 4 bytes) that holds the whole field, else bytes.
fn access_bytes(access: u8, bit_offset: u64, bit_length: u64) -> u8 {
    match access {
        1 => 1,
        2 => 2,
        3 => 4,
        4 => 8,
        0 => {
            let mut width: u64 = 4;
            while width > 1 {
                let bits = width * 8;
                if bit_offset % bits + bit_length <= bits {
                    break;
                }
                width /= 2;
            }
            width as u8
        }
        _ => 1,
    }
}

/// Copies `length` bits from `source` at bit `from` into `dest` at bit `to`; bits past the end
/// of `source` read as zero; writing past `dest` is an error.
fn copy_bits(source: &[u8], from: u64, dest: &mut [u8], to: u64, length: u64) -> Result<(), Error> {
    if to + length > dest.len() as u64 * 8 {
        return Err(Error::Index);
    }
    for i in 0..length {
        let s = from + i;
        let bit = source
            .get((s / 8) as usize)
            .map(|byte| (byte >> (s % 8)) & 1)
            .unwrap_or(0);
        let d = to + i;
        let byte = &mut dest[(d / 8) as usize];
        if bit != 0 {
            *byte |= 1 << (d % 8);
        } else {
            *byte &= !(1 << (d % 8));
        }
    }
    Ok(())
}

fn bits_value(bytes: Vec<u8>, bit_length: u64) -> Value {
    if bit_length <= 64 {
        let mut raw = [0u8; 8];
        raw[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
        Value::Integer(u64::from_le_bytes(raw))
    } else {
        Value::Buffer(bytes)
    }
}

fn value_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::Integer(v) => v.to_le_bytes().to_vec(),
        Value::Buffer(bytes) => bytes.clone(),
        Value::String(text) => text.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

fn index_of(source: &Value, index: usize) -> Result<Value, Error> {
    match source {
        Value::Buffer(bytes) => bytes
            .get(index)
            .map(|&b| Value::Integer(b as u64))
            .ok_or(Error::Index),
        Value::String(text) => text
            .as_bytes()
            .get(index)
            .map(|&b| Value::Integer(b as u64))
            .ok_or(Error::Index),
        Value::Package(elements) => elements.get(index).cloned().ok_or(Error::Index),
        _ => Err(Error::Type("Index needs a buffer, string or package")),
    }
}

fn type_code(value: &Value) -> u64 {
    match value {
        Value::Uninitialized => 0,
        Value::Integer(_) => 1,
        Value::String(_) => 2,
        Value::Buffer(_) => 3,
        Value::Package(_) => 4,
        Value::Name(_) | Value::Reference(_) => 0,
    }
}

fn compare(a: &Value, b: &Value) -> Result<core::cmp::Ordering, Error> {
    Ok(match (a, b) {
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Buffer(x), Value::Buffer(y)) => x.cmp(y),
        (Value::String(x), other) => x.as_bytes().cmp(&value_bytes(other)[..]),
        (Value::Buffer(x), other) => x[..].cmp(&value_bytes(other)[..]),
        _ => a.as_integer()?.cmp(&b.as_integer()?),
    })
}

fn strip_end_tag(template: &[u8]) -> &[u8] {
    if template.len() >= 2 && template[template.len() - 2] == 0x79 {
        &template[..template.len() - 2]
    } else {
        template
    }
}

impl Namespace {
    /// Loads a definition block (a whole DSDT or SSDT, header included) into the namespace.
    /// The DSDT's revision sets the integer width (32 bits below revision 2). Errors inside a
    /// scope or device skip the rest of it and are returned in the list; an error at the top
    /// level stops the table, which is the `Err`. What loaded before an error stays.
    pub fn load_table(
        &mut self,
        table: &[u8],
        host: &mut dyn Host,
    ) -> Result<Vec<String>, (Error, Vec<String>)> {
        if table.len() < 36 {
            return Err((Error::UnexpectedEnd, Vec::new()));
        }
        if &table[..4] == b"DSDT" && table[8] < 2 {
            self.integer_mask = u32::MAX as u64;
        }
        let data: Arc<[u8]> = Arc::from(table);
        // About one object per 32 bytes of AML (QEMU's q35 DSDT: 257 in 8 KiB): growing the
        // arena as it fills would copy it over and over.
        self.nodes.reserve(table.len() / 32);
        let mut errors = Vec::new();
        let result = Exec::new(self, host).load(data, &mut errors);
        match result {
            Ok(()) => Ok(errors),
            Err(error) => Err((error, errors)),
        }
    }

    /// Evaluates the object at `path`: runs a method with `args`, reads a field, or returns a
    /// named value.
    pub fn evaluate(
        &mut self,
        host: &mut dyn Host,
        path: &str,
        args: Vec<Value>,
    ) -> Result<Value, Error> {
        let node = self
            .find(path)
            .ok_or_else(|| Error::NotFound(path.into()))?;
        self.evaluate_node(host, node, args)
    }

    /// Evaluates a node (as [`Namespace::evaluate`]).
    pub fn evaluate_node(
        &mut self,
        host: &mut dyn Host,
        node: NodeId,
        args: Vec<Value>,
    ) -> Result<Value, Error> {
        Exec::new(self, host).value_of(node, args)
    }

    /// Evaluates `parent.name` if that child exists (`None` if it does not).
    pub fn evaluate_child(
        &mut self,
        host: &mut dyn Host,
        parent: NodeId,
        name: &str,
    ) -> Option<Result<Value, Error>> {
        let segment = NameString::parse_text(name)?.segments().first().copied()?;
        let child = self.child(parent, segment)?;
        Some(self.evaluate_node(host, child, Vec::new()))
    }
}
