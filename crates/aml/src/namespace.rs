//! The ACPI namespace: a tree of named objects, each a 4-character name segment.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::{Error, Value};

/// A node of the namespace (an index into its arena).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub(crate) usize);

/// How a field unit reaches its bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldKind {
    /// Bits of an operation region.
    Region(NodeId),
    /// Write the byte offset to `index`, then access `data` (an `IndexField`).
    Index { index: NodeId, data: NodeId },
    /// Write `value` to `bank`, then access the region (a `BankField`).
    Bank {
        region: NodeId,
        bank: NodeId,
        value: u64,
    },
}

/// A field unit: `bit_length` bits at `bit_offset`, accessed `access_bytes` at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub kind: FieldKind,
    pub bit_offset: u64,
    pub bit_length: u64,
    pub access_bytes: u8,
    /// 0: preserve the other bits of a partly written unit, 1: write them as ones, 2: zeros.
    pub update_rule: u8,
}

/// What a namespace node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKind {
    /// A scope that is nothing else (`\`, `\_SB`, `\_GPE`...).
    Scope,
    Device,
    Processor,
    PowerResource,
    ThermalZone,
    /// A named data object (`Name`).
    Name(Value),
    /// A control method: its argument count, whether it is serialized, and its body.
    Method {
        arguments: u8,
        serialized: bool,
        #[doc(hidden)]
        body: MethodBody,
    },
    /// An operation region: space id, offset and length.
    Region {
        space: u8,
        offset: u64,
        length: u64,
    },
    #[doc(hidden)]
    Field(FieldUnit),
    #[doc(hidden)]
    BufferField(BufferFieldUnit),
    Mutex,
    Event,
    Alias(NodeId),
    /// A `Name` whose package or buffer is not built yet: loading keeps its AML and the scope
    /// to build it in, and the first use builds it (most are never used at all, and building
    /// them made loading several times slower).
    #[doc(hidden)]
    Deferred {
        body: MethodBody,
        scope: NodeId,
    },
}

/// A method's AML (a range of one loaded table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodBody {
    pub(crate) table: Arc<[u8]>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// A field unit (opaque outside the crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldUnit(pub(crate) Field);

/// Bits of a named buffer (`CreateDWordField` and friends); opaque outside the crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferFieldUnit {
    pub(crate) buffer: NodeId,
    pub(crate) bit_offset: u64,
    pub(crate) bit_length: u64,
}

/// A node; children are a linked list (no allocation per node beyond the arena's).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: [u8; 4],
    pub parent: Option<NodeId>,
    pub first_child: Option<NodeId>,
    pub last_child: Option<NodeId>,
    pub next_sibling: Option<NodeId>,
    pub kind: ObjectKind,
    pub live: bool,
}

/// The namespace and the tables loaded into it.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub(crate) nodes: Vec<Node>,
    /// Integers are 32 bits wide when the DSDT's revision is below 2.
    pub(crate) integer_mask: u64,
    /// Nodes freed by methods that ended, for reuse.
    pub(crate) free: Vec<NodeId>,
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}

/// The root's name.
pub const ROOT: NodeId = NodeId(0);

impl Namespace {
    /// An empty namespace with the predefined scopes (`\_GPE`, `\_PR_`, `\_SB_`, `\_SI_`,
    /// `\_TZ_`).
    pub fn new() -> Namespace {
        let mut namespace = Namespace {
            nodes: alloc::vec![Node {
                name: *b"\\___",
                parent: None,
                first_child: None,
                last_child: None,
                next_sibling: None,
                kind: ObjectKind::Scope,
                live: true,
            }],
            integer_mask: u64::MAX,
            free: Vec::new(),
        };
        for name in [b"_GPE", b"_PR_", b"_SB_", b"_SI_", b"_TZ_"] {
            let _ = namespace.add(ROOT, *name, ObjectKind::Scope);
        }
        namespace
    }

    /// What a node holds.
    pub fn kind(&self, id: NodeId) -> &ObjectKind {
        &self.nodes[id.0].kind
    }

    pub(crate) fn set_kind(&mut self, id: NodeId, kind: ObjectKind) {
        self.nodes[id.0].kind = kind;
    }

    /// The parent of a node (`None` for the root).
    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.nodes[id.0].parent
    }

    /// The children of a node, in creation order.
    pub fn children(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut cursor = self.nodes[id.0].first_child;
        while let Some(child) = cursor {
            out.push(child);
            cursor = self.nodes[child.0].next_sibling;
        }
        out
    }

    /// The child called `name` (a 4-byte segment).
    pub fn child(&self, parent: NodeId, name: [u8; 4]) -> Option<NodeId> {
        let mut cursor = self.nodes[parent.0].first_child;
        while let Some(child) = cursor {
            let node = &self.nodes[child.0];
            if node.name == name {
                return Some(child);
            }
            cursor = node.next_sibling;
        }
        None
    }

    /// Adds `name` under `parent`. A scope-like node that exists already (a `Scope` opened
    /// twice, or declared by `External`) is reused when a device of that name is declared.
    pub(crate) fn add(
        &mut self,
        parent: NodeId,
        name: [u8; 4],
        kind: ObjectKind,
    ) -> Result<NodeId, Error> {
        if let Some(existing) = self.child(parent, name) {
            let node = &mut self.nodes[existing.0];
            return match (&node.kind, &kind) {
                (ObjectKind::Scope, _) => {
                    node.kind = kind;
                    Ok(existing)
                }
                _ => Err(Error::AlreadyExists(self.path(existing))),
            };
        }
        let node = Node {
            name,
            parent: Some(parent),
            first_child: None,
            last_child: None,
            next_sibling: None,
            kind,
            live: true,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id.0] = node;
                id
            }
            None => {
                self.nodes.push(node);
                NodeId(self.nodes.len() - 1)
            }
        };
        match self.nodes[parent.0].last_child {
            Some(last) => self.nodes[last.0].next_sibling = Some(id),
            None => self.nodes[parent.0].first_child = Some(id),
        }
        self.nodes[parent.0].last_child = Some(id);
        Ok(id)
    }

    /// Removes a node and its subtree (objects a method created, when it returns).
    pub(crate) fn remove(&mut self, id: NodeId) {
        if !self.nodes[id.0].live || id == ROOT {
            return;
        }
        for child in self.children(id) {
            self.remove(child);
        }
        if let Some(parent) = self.nodes[id.0].parent {
            // Unlink from the parent's list.
            let next = self.nodes[id.0].next_sibling;
            let mut previous = None;
            let mut cursor = self.nodes[parent.0].first_child;
            while let Some(child) = cursor {
                if child == id {
                    break;
                }
                previous = Some(child);
                cursor = self.nodes[child.0].next_sibling;
            }
            match previous {
                Some(previous) => self.nodes[previous.0].next_sibling = next,
                None => self.nodes[parent.0].first_child = next,
            }
            if self.nodes[parent.0].last_child == Some(id) {
                self.nodes[parent.0].last_child = previous;
            }
        }
        self.nodes[id.0].live = false;
        self.nodes[id.0].kind = ObjectKind::Scope;
        self.free.push(id);
    }

    /// The node's absolute path, `\_SB_.PCI0.S08_` style (the root is `\`).
    pub fn path(&self, id: NodeId) -> String {
        let mut segments = Vec::new();
        let mut cursor = Some(id);
        while let Some(node) = cursor {
            if node == ROOT {
                break;
            }
            segments.push(self.nodes[node.0].name);
            cursor = self.nodes[node.0].parent;
        }
        let mut path = String::from("\\");
        for (index, segment) in segments.iter().rev().enumerate() {
            if index > 0 {
                path.push('.');
            }
            path.extend(segment.iter().map(|&b| b as char));
        }
        path
    }

    /// The node's last name segment.
    pub fn name(&self, id: NodeId) -> [u8; 4] {
        self.nodes[id.0].name
    }

    /// Looks up a name as AML would from `scope`: `\`-rooted and `^`-prefixed names and
    /// multi-segment paths are exact; a single bare segment is searched in `scope` and then each
    /// enclosing scope up to the root (ACPI 6.5 section 5.3).
    pub fn lookup(&self, scope: NodeId, name: &NameString) -> Option<NodeId> {
        let start = if name.root {
            ROOT
        } else {
            let mut start = scope;
            for _ in 0..name.parents {
                start = self.nodes[start.0].parent?;
            }
            start
        };
        if name.segments().is_empty() {
            return Some(start);
        }
        let exact = name.root || name.parents > 0 || name.segments().len() > 1;
        let mut base = start;
        loop {
            let mut cursor = Some(base);
            for segment in name.segments() {
                cursor = cursor.and_then(|node| self.child(node, *segment));
            }
            if let Some(found) = cursor {
                return Some(self.resolve_alias(found));
            }
            if exact {
                return None;
            }
            base = self.nodes[base.0].parent?;
        }
    }

    /// Looks up an absolute path written as text (`\_SB.PCI0._PRT`, `\_S5`, `_SB_.GED_`).
    pub fn find(&self, path: &str) -> Option<NodeId> {
        self.lookup(ROOT, &NameString::parse_text(path)?)
    }

    fn resolve_alias(&self, mut id: NodeId) -> NodeId {
        for _ in 0..8 {
            match self.nodes[id.0].kind {
                ObjectKind::Alias(target) => id = target,
                _ => break,
            }
        }
        id
    }

    /// Every live node below `from` (depth first, in creation order), `from` included.
    pub fn walk(&self, from: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut cursor = Some(from);
        while let Some(node) = cursor {
            out.push(node);
            if let Some(child) = self.nodes[node.0].first_child {
                cursor = Some(child);
                continue;
            }
            // Up until a node has a next sibling, stopping at `from`.
            let mut up = node;
            cursor = loop {
                if up == from {
                    break None;
                }
                if let Some(next) = self.nodes[up.0].next_sibling {
                    break Some(next);
                }
                match self.nodes[up.0].parent {
                    Some(parent) => up = parent,
                    None => break None,
                }
            };
        }
        out
    }
}

/// Segments a name may have (AML allows 255; firmware uses a handful).
const MAX_SEGMENTS: usize = 8;

/// A parsed AML name: a root or parent prefix and name segments, held inline (names are
/// parsed constantly; allocating each one made loading several times slower).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameString {
    pub root: bool,
    pub parents: usize,
    segments: [[u8; 4]; MAX_SEGMENTS],
    count: usize,
}

impl NameString {
    /// The name segments.
    pub fn segments(&self) -> &[[u8; 4]] {
        &self.segments[..self.count]
    }

    /// Appends a segment (an error past the inline limit).
    pub fn push(&mut self, segment: [u8; 4]) -> Result<(), Error> {
        let slot = self.segments.get_mut(self.count).ok_or(Error::TooDeep)?;
        *slot = segment;
        self.count += 1;
        Ok(())
    }

    /// The same prefix with only the first `count` segments.
    pub fn truncated(&self, count: usize) -> NameString {
        let mut name = *self;
        name.count = count.min(self.count);
        name
    }

    /// A one-segment relative name.
    pub fn single(segment: [u8; 4]) -> NameString {
        let mut name = NameString::default();
        name.segments[0] = segment;
        name.count = 1;
        name
    }

    /// Parses a path as text: `\_SB.PCI0`, `^^FOO`, `_S5` (segments shorter than four characters
    /// are padded with `_`).
    pub fn parse_text(text: &str) -> Option<NameString> {
        let mut name = NameString::default();
        let mut rest = text;
        if let Some(stripped) = rest.strip_prefix('\\') {
            name.root = true;
            rest = stripped;
        }
        while let Some(stripped) = rest.strip_prefix('^') {
            name.parents += 1;
            rest = stripped;
        }
        if rest.is_empty() {
            return Some(name);
        }
        for part in rest.split('.') {
            if part.is_empty() || part.len() > 4 || !part.is_ascii() {
                return None;
            }
            let mut segment = [b'_'; 4];
            segment[..part.len()].copy_from_slice(part.as_bytes());
            name.push(segment).ok()?;
        }
        Some(name)
    }

    /// The name as AML source would write it.
    pub fn to_text(self) -> String {
        let mut text = String::new();
        if self.root {
            text.push('\\');
        }
        for _ in 0..self.parents {
            text.push('^');
        }
        for (index, segment) in self.segments().iter().enumerate() {
            if index > 0 {
                text.push('.');
            }
            text.extend(segment.iter().map(|&b| b as char));
        }
        text
    }
}
