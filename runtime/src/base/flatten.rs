//! Flattening: the linked component's core instances merged into one core
//! module, so an instance costs one core instantiation with lazily
//! initialized tables instead of a dozen eagerly wired ones.
//!
//! `wit-component`'s [`Linker`](wit_component::Linker) puts a component
//! together the way a dynamic linker would: an `env` module owning the memory
//! and the function table, one core instance per shared library importing
//! them (with its segments at `global.get $__memory_base` /
//! `$__table_base`), the preview1 adapter, a shim module whose functions
//! `call_indirect` through a table that a fixup module fills with the lowered
//! imports once the memory exists, and an `__init` module whose start
//! function runs relocations and constructors. wasmtime builds a `VMFuncRef`
//! for every function one core instance takes from another and for every
//! element of a segment it cannot precompute: thousands per instance.
//!
//! [`flatten`] reads the component's instantiation graph (`instantiate …
//! with …` arguments and `from exports` bags) and merges every core instance
//! it can into one module `M`:
//! - every import an instance takes from another merged instance becomes a
//!   direct reference to the merged definition (through bags and re-exports);
//! - what comes from outside (canonical lowerings and built-ins that need no
//!   memory of `M`) becomes an import of `M` from one new bag instance;
//! - immutable globals with constant initializers (`__memory_base`,
//!   `__table_base`, `{lib}:memory_base`, …) are folded into constant
//!   expressions and into the code that reads them, so every element and data
//!   segment lands at a literal offset and lazy table initialization applies;
//! - the start functions of the merged modules, in instantiation order,
//!   become one exported function that a two-line "starter" module calls
//!   from its start function, instantiated where the last merged instance
//!   was (after the fixup, as `__init` was: constructors may call imports).
//!
//! What cannot be merged stays: an instance whose arguments depend on `M`
//! through something other than a plain alias (the fixup: its lowerings take
//! `M`'s memory and realloc). Canonical lowerings, lifts and the component's
//! WIT interface are unchanged. A graph that cannot be merged this way (a
//! cycle through an outside item) is refused with [`FlattenError`], never
//! emitted half-flattened; [`link::ensure_component`](super::link::ensure_component)
//! then runs the linked component as it is.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;

use wasm_encoder::reencode::{self, Reencode, ReencodeComponent};
use wasm_encoder::{
    CodeSection, ComponentAliasSection, ComponentSectionId, ConstExpr, DataCountSection,
    DataSection, ElementSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, ImportSection, InstanceSection, MemorySection, Module, ModuleArg, RawSection,
    StartSection, TableSection, TagSection, TypeSection,
};
use wasmparser::{
    CanonicalFunction, ComponentAlias, ExternalKind, Instance, Operator, Parser, Payload, TypeRef,
    Validator, WasmFeatures,
};

/// Name of `M`'s export that runs the merged modules' start functions.
const START_EXPORT: &str = "eryx:flatten/start";

/// Why a component could not be flattened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlattenError {
    /// The input or an intermediate module does not parse or validate.
    #[error("invalid wasm: {0}")]
    Wasm(#[from] wasmparser::BinaryReaderError),
    /// Re-encoding a module or a component item failed.
    #[error("re-encoding: {0}")]
    Encode(String),
    /// The component's graph has a shape this pass does not merge (named in
    /// the message); the linked component is still usable as it is.
    #[error("unsupported component shape: {0}")]
    Unsupported(String),
}

impl<E: std::fmt::Debug> From<reencode::Error<E>> for FlattenError {
    fn from(e: reencode::Error<E>) -> Self {
        FlattenError::Encode(format!("{e:?}"))
    }
}

/// What flattening produced, for logs and the structural test.
#[derive(Debug, Clone)]
pub struct Flattened {
    /// The flattened component (`.wasm` bytes).
    pub component: Vec<u8>,
    /// Core instances merged into the one module.
    pub merged_instances: usize,
    /// Core instances left as they were (the fixup).
    pub kept_instances: usize,
    /// Functions the merged module imports (lowerings and built-ins).
    pub imports: usize,
}

/// Kinds of core items in a component's index spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Func,
    Table,
    Memory,
    Global,
    Tag,
}

impl Kind {
    fn of(kind: ExternalKind) -> Kind {
        match kind {
            ExternalKind::Func | ExternalKind::FuncExact => Kind::Func,
            ExternalKind::Table => Kind::Table,
            ExternalKind::Memory => Kind::Memory,
            ExternalKind::Global => Kind::Global,
            ExternalKind::Tag => Kind::Tag,
        }
    }
    fn of_ref(ty: &TypeRef) -> Kind {
        match ty {
            TypeRef::Func(_) | TypeRef::FuncExact(_) => Kind::Func,
            TypeRef::Table(_) => Kind::Table,
            TypeRef::Memory(_) => Kind::Memory,
            TypeRef::Global(_) => Kind::Global,
            TypeRef::Tag(_) => Kind::Tag,
        }
    }
    fn export_kind(self) -> ExportKind {
        match self {
            Kind::Func => ExportKind::Func,
            Kind::Table => ExportKind::Table,
            Kind::Memory => ExportKind::Memory,
            Kind::Global => ExportKind::Global,
            Kind::Tag => ExportKind::Tag,
        }
    }
    const ALL: [Kind; 5] = [
        Kind::Func,
        Kind::Table,
        Kind::Memory,
        Kind::Global,
        Kind::Tag,
    ];
    fn slot(self) -> usize {
        self as usize
    }
}

/// Where a core item of the component came from.
#[derive(Debug, Clone)]
enum Origin {
    /// `alias core export $instance "name"`.
    Alias { instance: u32, name: String },
    /// A canonical function (lowering or built-in) or anything else that is
    /// not an alias.
    Other,
}

/// A core instance of the component.
#[derive(Debug, Clone)]
enum CoreInstance {
    Instantiate {
        module: u32,
        args: Vec<(String, u32)>,
    },
    Bag(Vec<(String, Kind, u32)>),
}

/// The top level of the input component, read once.
struct Graph<'a> {
    modules: Vec<Range<usize>>,
    instances: Vec<CoreInstance>,
    /// Per kind, the origin of each core item, in index order.
    items: [Vec<Origin>; 5],
    /// Per core item, the core items it references (for canonical functions).
    canon_deps: HashMap<(Kind, u32), Vec<(Kind, u32)>>,
    bytes: &'a [u8],
}

/// Records every core index a component item references (and returns it
/// unchanged), to learn an item's dependencies generically.
#[derive(Default)]
struct Probe {
    refs: Vec<(Kind, u32)>,
    instances: Vec<u32>,
}

impl Reencode for Probe {
    type Error = std::convert::Infallible;
    fn function_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.refs.push((Kind::Func, i));
        Ok(i)
    }
    fn table_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.refs.push((Kind::Table, i));
        Ok(i)
    }
    fn memory_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.refs.push((Kind::Memory, i));
        Ok(i)
    }
    fn global_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.refs.push((Kind::Global, i));
        Ok(i)
    }
    fn tag_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.refs.push((Kind::Tag, i));
        Ok(i)
    }
}

impl ReencodeComponent for Probe {
    fn instance_index(&mut self, i: u32) -> u32 {
        self.instances.push(i);
        i
    }
}

/// Iterates the top-level payloads of a component, skipping what nested
/// modules and components contain.
fn top_level(bytes: &[u8]) -> impl Iterator<Item = Result<Payload<'_>, FlattenError>> {
    let mut depth = 0usize;
    Parser::new(0).parse_all(bytes).filter_map(move |p| {
        let p = match p {
            Ok(p) => p,
            Err(e) => return Some(Err(e.into())),
        };
        let at_top = depth == 0;
        match &p {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => {
                if depth == 0 {
                    return None;
                }
                depth -= 1;
                return None;
            }
            _ => {}
        }
        at_top.then_some(Ok(p))
    })
}

impl<'a> Graph<'a> {
    fn read(bytes: &'a [u8]) -> Result<Self, FlattenError> {
        let mut graph = Graph {
            modules: Vec::new(),
            instances: Vec::new(),
            items: Default::default(),
            canon_deps: HashMap::new(),
            bytes,
        };
        for payload in top_level(bytes) {
            match payload? {
                Payload::ModuleSection {
                    unchecked_range, ..
                } => graph.modules.push(unchecked_range),
                Payload::InstanceSection(s) => {
                    for instance in s {
                        graph.instances.push(match instance? {
                            Instance::Instantiate { module_index, args } => {
                                CoreInstance::Instantiate {
                                    module: module_index,
                                    args: args
                                        .iter()
                                        .map(|a| (a.name.to_owned(), a.index))
                                        .collect(),
                                }
                            }
                            Instance::FromExports(exports) => CoreInstance::Bag(
                                exports
                                    .iter()
                                    .map(|e| (e.name.to_owned(), Kind::of(e.kind), e.index))
                                    .collect(),
                            ),
                        });
                    }
                }
                Payload::ComponentAliasSection(s) => {
                    for alias in s {
                        if let ComponentAlias::CoreInstanceExport {
                            kind,
                            instance_index,
                            name,
                        } = alias?
                        {
                            graph.items[Kind::of(kind).slot()].push(Origin::Alias {
                                instance: instance_index,
                                name: name.to_owned(),
                            });
                        }
                    }
                }
                Payload::ComponentCanonicalSection(s) => {
                    for func in s {
                        let func = func?;
                        if matches!(func, CanonicalFunction::Lift { .. }) {
                            continue;
                        }
                        let mut probe = Probe::default();
                        let mut sink = wasm_encoder::CanonicalFunctionSection::new();
                        probe.parse_component_canonical(&mut sink, func)?;
                        let index = graph.items[Kind::Func.slot()].len() as u32;
                        graph.canon_deps.insert((Kind::Func, index), probe.refs);
                        graph.items[Kind::Func.slot()].push(Origin::Other);
                    }
                }
                Payload::ComponentImportSection(s) => {
                    for import in s {
                        if let wasmparser::ComponentTypeRef::Module(_) = import?.ty {
                            return Err(FlattenError::Unsupported(
                                "the component imports a core module".into(),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(graph)
    }

    fn module_bytes(&self, module: u32) -> &'a [u8] {
        &self.bytes[self.modules[module as usize].clone()]
    }

    /// The instances that take an instance as an argument.
    fn consumers(&self) -> HashMap<u32, Vec<u32>> {
        let mut consumers: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, instance) in self.instances.iter().enumerate() {
            if let CoreInstance::Instantiate { args, .. } = instance {
                for (_, arg) in args {
                    consumers.entry(*arg).or_default().push(i as u32);
                }
            }
        }
        consumers
    }

    /// Whether core item `item` depends on any instance in `set` other than
    /// by being a plain alias of its export (which merging resolves).
    fn tainted(
        &self,
        item: (Kind, u32),
        set: &BTreeSet<u32>,
        seen: &mut HashSet<(Kind, u32)>,
    ) -> bool {
        if !seen.insert(item) {
            return false;
        }
        match &self.items[item.0.slot()].get(item.1 as usize) {
            Some(Origin::Alias { instance, .. }) => {
                if set.contains(instance) {
                    return false;
                }
                self.instance_depends_on(*instance, set, seen)
            }
            Some(Origin::Other) => self
                .canon_deps
                .get(&item)
                .into_iter()
                .flatten()
                .any(|dep| self.refers_to(*dep, set, seen)),
            None => false,
        }
    }

    /// Whether `item` (referenced by an outside item) depends on `set` at all.
    fn refers_to(
        &self,
        item: (Kind, u32),
        set: &BTreeSet<u32>,
        seen: &mut HashSet<(Kind, u32)>,
    ) -> bool {
        match &self.items[item.0.slot()].get(item.1 as usize) {
            Some(Origin::Alias { instance, .. }) if set.contains(instance) => true,
            _ => self.tainted(item, set, seen),
        }
    }

    fn instance_depends_on(
        &self,
        instance: u32,
        set: &BTreeSet<u32>,
        seen: &mut HashSet<(Kind, u32)>,
    ) -> bool {
        if set.contains(&instance) {
            return true;
        }
        match &self.instances[instance as usize] {
            CoreInstance::Instantiate { args, .. } => args
                .iter()
                .any(|(_, a)| self.instance_depends_on(*a, set, seen)),
            CoreInstance::Bag(items) => items
                .iter()
                .any(|(_, k, i)| self.refers_to((*k, *i), set, seen)),
        }
    }

    /// The instances to merge: every instantiation except those that need
    /// something made from a merged instance (other than its plain exports),
    /// which must come after the merged one.
    fn merge_set(&self) -> BTreeSet<u32> {
        let mut set: BTreeSet<u32> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| matches!(i, CoreInstance::Instantiate { .. }))
            .map(|(i, _)| i as u32)
            .collect();
        loop {
            let before = set.len();
            let members: Vec<u32> = set.iter().copied().collect();
            for m in members {
                let CoreInstance::Instantiate { args, .. } = &self.instances[m as usize] else {
                    continue;
                };
                let outside = args.iter().any(|(_, a)| {
                    if set.contains(a) {
                        return false;
                    }
                    match &self.instances[*a as usize] {
                        CoreInstance::Bag(items) => items
                            .iter()
                            .any(|(_, k, i)| self.tainted((*k, *i), &set, &mut HashSet::new())),
                        CoreInstance::Instantiate { .. } => true,
                    }
                });
                if outside {
                    set.remove(&m);
                }
            }
            if set.len() == before {
                return set;
            }
        }
    }
}

/// One module of the merge, parsed.
struct Member<'a> {
    instance: u32,
    args: HashMap<String, u32>,
    types: Vec<wasmparser::RecGroup>,
    type_count: u32,
    imports: Vec<wasmparser::Import<'a>>,
    /// Imported items per kind, in order: index into `imports`.
    imported: [Vec<usize>; 5],
    /// Defined items per kind (count), and their details.
    funcs: Vec<u32>,
    tables: Vec<wasmparser::Table<'a>>,
    memories: Vec<wasmparser::MemoryType>,
    globals: Vec<wasmparser::Global<'a>>,
    tags: Vec<wasmparser::TagType>,
    exports: HashMap<String, (Kind, u32)>,
    start: Option<u32>,
    elements: Vec<wasmparser::Element<'a>>,
    data: Vec<wasmparser::Data<'a>>,
    bodies: Vec<wasmparser::FunctionBody<'a>>,
    names: Vec<(u32, String)>,
}

impl<'a> Member<'a> {
    fn parse(instance: u32, args: &[(String, u32)], bytes: &'a [u8]) -> Result<Self, FlattenError> {
        let mut m = Member {
            instance,
            args: args.iter().cloned().collect(),
            types: Vec::new(),
            type_count: 0,
            imports: Vec::new(),
            imported: Default::default(),
            funcs: Vec::new(),
            tables: Vec::new(),
            memories: Vec::new(),
            globals: Vec::new(),
            tags: Vec::new(),
            exports: HashMap::new(),
            start: None,
            elements: Vec::new(),
            data: Vec::new(),
            bodies: Vec::new(),
            names: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::TypeSection(s) => {
                    for group in s {
                        let group = group?;
                        m.type_count += group.types().len() as u32;
                        m.types.push(group);
                    }
                }
                Payload::ImportSection(s) => {
                    for import in s.into_imports() {
                        let import = import?;
                        m.imported[Kind::of_ref(&import.ty).slot()].push(m.imports.len());
                        m.imports.push(import);
                    }
                }
                Payload::FunctionSection(s) => m.funcs.extend(items(s)?),
                Payload::TableSection(s) => m.tables.extend(items(s)?),
                Payload::MemorySection(s) => m.memories.extend(items(s)?),
                Payload::GlobalSection(s) => m.globals.extend(items(s)?),
                Payload::TagSection(s) => m.tags.extend(items(s)?),
                Payload::ExportSection(s) => {
                    for e in s {
                        let e = e?;
                        m.exports
                            .insert(e.name.to_owned(), (Kind::of(e.kind), e.index));
                    }
                }
                Payload::StartSection { func, .. } => m.start = Some(func),
                Payload::ElementSection(s) => m.elements.extend(items(s)?),
                Payload::DataSection(s) => m.data.extend(items(s)?),
                Payload::CodeSectionEntry(body) => m.bodies.push(body),
                Payload::CustomSection(c) => {
                    if let wasmparser::KnownCustom::Name(reader) = c.as_known() {
                        for name in reader {
                            if let Ok(wasmparser::Name::Function(map)) = name {
                                for naming in map.into_iter().flatten() {
                                    m.names.push((naming.index, naming.name.to_owned()));
                                }
                            }
                        }
                    }
                }
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                    return Err(FlattenError::Unsupported("a nested module".into()));
                }
                _ => {}
            }
        }
        Ok(m)
    }

    fn defined_count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Func => self.funcs.len(),
            Kind::Table => self.tables.len(),
            Kind::Memory => self.memories.len(),
            Kind::Global => self.globals.len(),
            Kind::Tag => self.tags.len(),
        }
    }
}

/// Every item of a section, or its first error.
fn items<'a, T: wasmparser::FromReader<'a>>(
    section: wasmparser::SectionLimited<'a, T>,
) -> Result<Vec<T>, FlattenError> {
    Ok(section.into_iter().collect::<Result<Vec<_>, _>>()?)
}

/// What a member's item resolves to after merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    /// Defined by member `member` (position in the merge), `index`-th
    /// definition of its kind.
    Defined { member: usize, index: u32 },
    /// A core item of the component from outside the merge.
    External(u32),
}

/// The name under which `M` exports each `(merged instance, export name)`.
type ExportNames = HashMap<(u32, String), String>;

/// Folded value of a constant global.
#[derive(Debug, Clone, Copy)]
enum Const {
    I32(i32),
    I64(i64),
}

struct Merge<'a, 'g> {
    graph: &'g Graph<'a>,
    members: Vec<Member<'a>>,
    by_instance: HashMap<u32, usize>,
    /// Outside items `M` imports, per kind: component index → `M` import slot.
    externals: [Vec<u32>; 5],
    external_slot: HashMap<(Kind, u32), u32>,
    /// Types of outside items, from the first import that asked for them.
    external_types: HashMap<(Kind, u32), (usize, TypeRef)>,
    /// Resolution of every imported item: (member, kind, import position).
    resolved: HashMap<(usize, Kind, u32), Target>,
    /// Start of each member's definitions of each kind in `M`, and of types,
    /// elements and data.
    bases: Vec<[u32; 5]>,
    type_bases: Vec<u32>,
    elem_bases: Vec<u32>,
    data_bases: Vec<u32>,
    consts: HashMap<(usize, u32), Option<Const>>,
}

impl<'a, 'g> Merge<'a, 'g> {
    fn new(graph: &'g Graph<'a>, set: &BTreeSet<u32>) -> Result<Self, FlattenError> {
        let mut order: Vec<u32> = set.iter().copied().collect();
        order.sort_unstable();
        let mut members = Vec::new();
        let mut by_instance = HashMap::new();
        let mut seen_modules = HashSet::new();
        for instance in order {
            let CoreInstance::Instantiate { module, args } = &graph.instances[instance as usize]
            else {
                unreachable!("only instantiations are merged")
            };
            if !seen_modules.insert(*module) {
                return Err(FlattenError::Unsupported(format!(
                    "core module {module} is instantiated twice"
                )));
            }
            by_instance.insert(instance, members.len());
            members.push(Member::parse(instance, args, graph.module_bytes(*module))?);
        }
        let mut merge = Merge {
            graph,
            members,
            by_instance,
            externals: Default::default(),
            external_slot: HashMap::new(),
            external_types: HashMap::new(),
            resolved: HashMap::new(),
            bases: Vec::new(),
            type_bases: Vec::new(),
            elem_bases: Vec::new(),
            data_bases: Vec::new(),
            consts: HashMap::new(),
        };
        merge.resolve_imports()?;
        merge.assign()?;
        Ok(merge)
    }

    /// Resolves the export `name` of merged instance `instance`.
    fn resolve_export(
        &self,
        instance: u32,
        kind: Kind,
        name: &str,
        depth: u32,
    ) -> Result<Target, FlattenError> {
        let member = self.by_instance[&instance];
        let m = &self.members[member];
        let Some(&(k, index)) = m.exports.get(name) else {
            return Err(FlattenError::Unsupported(format!(
                "instance {instance} has no export {name:?}"
            )));
        };
        if k != kind {
            return Err(FlattenError::Unsupported(format!(
                "export {name:?} of instance {instance} is not a {kind:?}"
            )));
        }
        self.resolve_local(member, kind, index, depth + 1)
    }

    /// Resolves member `member`'s item `index` (its own index space).
    fn resolve_local(
        &self,
        member: usize,
        kind: Kind,
        index: u32,
        depth: u32,
    ) -> Result<Target, FlattenError> {
        let m = &self.members[member];
        let imported = m.imported[kind.slot()].len() as u32;
        if index >= imported {
            return Ok(Target::Defined {
                member,
                index: index - imported,
            });
        }
        self.resolve_import(member, kind, index, depth)
    }

    fn resolve_import(
        &self,
        member: usize,
        kind: Kind,
        position: u32,
        depth: u32,
    ) -> Result<Target, FlattenError> {
        if depth > 64 {
            return Err(FlattenError::Unsupported("an import cycle".into()));
        }
        let m = &self.members[member];
        let import = &m.imports[m.imported[kind.slot()][position as usize]];
        let Some(&arg) = m.args.get(import.module) else {
            return Err(FlattenError::Unsupported(format!(
                "instance {} has no argument {:?}",
                m.instance, import.module
            )));
        };
        if self.by_instance.contains_key(&arg) {
            return self.resolve_export(arg, kind, import.name, depth);
        }
        let CoreInstance::Bag(items) = &self.graph.instances[arg as usize] else {
            return Err(FlattenError::Unsupported(format!(
                "instance {} takes unmerged instance {arg} whole",
                m.instance
            )));
        };
        let Some(&(_, k, item)) = items.iter().find(|(n, _, _)| n == import.name) else {
            return Err(FlattenError::Unsupported(format!(
                "bag {arg} has no item {:?}",
                import.name
            )));
        };
        if k != kind {
            return Err(FlattenError::Unsupported(format!(
                "bag item {:?} has the wrong kind",
                import.name
            )));
        }
        match &self.graph.items[kind.slot()].get(item as usize) {
            Some(Origin::Alias { instance, name }) if self.by_instance.contains_key(instance) => {
                self.resolve_export(*instance, kind, name, depth)
            }
            Some(_) => Ok(Target::External(item)),
            None => Err(FlattenError::Unsupported(format!(
                "no core {kind:?} {item}"
            ))),
        }
    }

    fn resolve_imports(&mut self) -> Result<(), FlattenError> {
        for member in 0..self.members.len() {
            for kind in Kind::ALL {
                for position in 0..self.members[member].imported[kind.slot()].len() as u32 {
                    let target = self.resolve_import(member, kind, position, 0)?;
                    if let Target::External(item) = target
                        && !self.external_slot.contains_key(&(kind, item))
                    {
                        let slot = self.externals[kind.slot()].len() as u32;
                        self.externals[kind.slot()].push(item);
                        self.external_slot.insert((kind, item), slot);
                        let m = &self.members[member];
                        let import = &m.imports[m.imported[kind.slot()][position as usize]];
                        self.external_types
                            .insert((kind, item), (member, import.ty));
                    }
                    self.resolved.insert((member, kind, position), target);
                }
            }
        }
        Ok(())
    }

    fn assign(&mut self) -> Result<(), FlattenError> {
        let mut next = [0u32; 5];
        for kind in Kind::ALL {
            next[kind.slot()] = self.externals[kind.slot()].len() as u32;
        }
        let (mut types, mut elems, mut data) = (0u32, 0u32, 0u32);
        for m in &self.members {
            self.bases.push(next);
            for kind in Kind::ALL {
                next[kind.slot()] += m.defined_count(kind) as u32;
            }
            self.type_bases.push(types);
            types += m.type_count;
            self.elem_bases.push(elems);
            elems += m.elements.len() as u32;
            self.data_bases.push(data);
            data += m.data.len() as u32;
        }
        if next[Kind::Memory.slot()] != 1 {
            return Err(FlattenError::Unsupported(format!(
                "{} memories after merging (one expected)",
                next[Kind::Memory.slot()]
            )));
        }
        Ok(())
    }

    /// `M`'s index of a target.
    fn index(&self, kind: Kind, target: Target) -> u32 {
        match target {
            Target::Defined { member, index } => self.bases[member][kind.slot()] + index,
            Target::External(item) => self.external_slot[&(kind, item)],
        }
    }

    /// `M`'s index of member `member`'s item `index`.
    fn map(&self, member: usize, kind: Kind, index: u32) -> u32 {
        let imported = self.members[member].imported[kind.slot()].len() as u32;
        if index >= imported {
            self.bases[member][kind.slot()] + index - imported
        } else {
            self.index(kind, self.resolved[&(member, kind, index)])
        }
    }

    /// The constant value of member `member`'s global `index`, when it is
    /// immutable and its initializer folds.
    fn const_global(&mut self, member: usize, index: u32) -> Option<Const> {
        let target = {
            let imported = self.members[member].imported[Kind::Global.slot()].len() as u32;
            if index >= imported {
                Target::Defined {
                    member,
                    index: index - imported,
                }
            } else {
                self.resolved[&(member, Kind::Global, index)]
            }
        };
        let Target::Defined { member, index } = target else {
            return None;
        };
        if let Some(c) = self.consts.get(&(member, index)) {
            return *c;
        }
        self.consts.insert((member, index), None);
        let global = &self.members[member].globals[index as usize];
        let value = if global.ty.mutable {
            None
        } else {
            let expr = global.init_expr.clone();
            self.eval(member, &expr)
        };
        self.consts.insert((member, index), value);
        value
    }

    /// Evaluates a constant expression of member `member` (see [`eval_const`]).
    fn eval(&mut self, member: usize, expr: &wasmparser::ConstExpr<'_>) -> Option<Const> {
        eval_const(expr, |global| self.const_global(member, global))
    }

    /// Builds `M`; returns it and the name under which it exports each
    /// `(member instance, export name)` the component aliases.
    fn encode(
        &mut self,
        wanted: &[(u32, Kind, String)],
    ) -> Result<(Vec<u8>, ExportNames), FlattenError> {
        // Fold every global first (the reencoder below only reads the map).
        for member in 0..self.members.len() {
            let imported = self.members[member].imported[Kind::Global.slot()].len() as u32;
            for g in 0..imported + self.members[member].globals.len() as u32 {
                self.const_global(member, g);
            }
        }

        let mut types = TypeSection::new();
        let mut imports = ImportSection::new();
        let mut functions = FunctionSection::new();
        let mut tables = TableSection::new();
        let mut memories = MemorySection::new();
        let mut tags = TagSection::new();
        let mut globals = GlobalSection::new();
        let mut exports = ExportSection::new();
        let mut elements = ElementSection::new();
        let mut code = CodeSection::new();
        let mut data = DataSection::new();
        let mut names = wasm_encoder::NameMap::new();

        for member in 0..self.members.len() {
            let mut r = MemberMap {
                merge: self,
                member,
            };
            for group in self.members[member].types.clone() {
                r.parse_recursive_type_group(types.ty(), group)?;
            }
        }
        let total_types: u32 = self.members.iter().map(|m| m.type_count).sum();

        // Imports: the outside items, typed as their first importer asked.
        for kind in Kind::ALL {
            for (slot, item) in self.externals[kind.slot()].iter().enumerate() {
                let (member, ty) = self.external_types[&(kind, *item)];
                let mut r = MemberMap {
                    merge: self,
                    member,
                };
                let ty: EntityType = r.entity_type(ty)?;
                imports.import("", &format!("{}{slot}", kind_prefix(kind)), ty);
                if kind == Kind::Func {
                    names.append(slot as u32, &format!("import{slot}"));
                }
            }
        }

        let mut starts = Vec::new();
        for member in 0..self.members.len() {
            let m = &self.members[member];
            let mut r = MemberMap {
                merge: self,
                member,
            };
            for ty in &m.funcs {
                functions.function(r.type_index(*ty)?);
            }
            for t in m.tables.clone() {
                r.parse_table(&mut tables, t)?;
            }
            for mem in &m.memories {
                memories.memory(r.memory_type(*mem)?);
            }
            for tag in &m.tags {
                tags.tag(r.tag_type(*tag)?);
            }
            for g in m.globals.clone() {
                r.parse_global(&mut globals, g)?;
            }
            for e in m.elements.clone() {
                r.parse_element(&mut elements, e)?;
            }
            for body in m.bodies.clone() {
                r.parse_function_body(&mut code, body)?;
            }
            for d in m.data.clone() {
                r.parse_data(&mut data, d)?;
            }
            let imported = m.imported[Kind::Func.slot()].len() as u32;
            for (index, name) in &m.names {
                if *index >= imported {
                    names.append(self.map(member, Kind::Func, *index), name);
                }
            }
            if let Some(start) = m.start {
                starts.push(self.map(member, Kind::Func, start));
            }
        }

        // The start function: every merged start, in instantiation order.
        let start_type = total_types;
        types.ty().function([], []);
        let start_func = self.bases.last().map_or(0, |b| b[Kind::Func.slot()])
            + self.members.last().map_or(0, |m| m.funcs.len() as u32);
        functions.function(start_type);
        let mut body = Function::new([]);
        for f in &starts {
            body.instructions().call(*f);
        }
        body.instructions().end();
        code.function(&body);
        names.append(start_func, START_EXPORT);
        exports.export(START_EXPORT, ExportKind::Func, start_func);

        // Exports the component aliases, under unique names.
        let mut export_names = HashMap::new();
        let mut used = HashSet::from([START_EXPORT.to_owned()]);
        for (instance, kind, name) in wanted {
            if export_names.contains_key(&(*instance, name.clone())) {
                continue;
            }
            let target = self.resolve_export(*instance, *kind, name, 0)?;
            let index = self.index(*kind, target);
            let mut unique = name.clone();
            if !used.insert(unique.clone()) {
                unique = format!("{name}#{instance}");
                used.insert(unique.clone());
            }
            exports.export(&unique, kind.export_kind(), index);
            export_names.insert((*instance, name.clone()), unique);
        }

        let mut module = Module::new();
        module.section(&types);
        module.section(&imports);
        module.section(&functions);
        module.section(&tables);
        module.section(&memories);
        if !tags.is_empty() {
            module.section(&tags);
        }
        module.section(&globals);
        module.section(&exports);
        module.section(&elements);
        let data_count: u32 = self.members.iter().map(|m| m.data.len() as u32).sum();
        module.section(&DataCountSection { count: data_count });
        module.section(&code);
        module.section(&data);
        let mut name_section = wasm_encoder::NameSection::new();
        name_section.functions(&names);
        module.section(&name_section);
        Ok((module.finish(), export_names))
    }
}

/// Evaluates a constant expression made of integer constants, `global.get`
/// (a global's value from `global`, `None` when it does not fold) and
/// extended-const arithmetic; `None` when anything else appears.
fn eval_const(
    expr: &wasmparser::ConstExpr<'_>,
    mut global: impl FnMut(u32) -> Option<Const>,
) -> Option<Const> {
    let mut stack: Vec<Const> = Vec::new();
    let mut reader = expr.get_operators_reader();
    loop {
        let op = reader.read().ok()?;
        let value = match op {
            Operator::End => break,
            Operator::I32Const { value } => Const::I32(value),
            Operator::I64Const { value } => Const::I64(value),
            Operator::GlobalGet { global_index } => global(global_index)?,
            Operator::I32Add | Operator::I32Sub | Operator::I32Mul => {
                let (Some(Const::I32(b)), Some(Const::I32(a))) = (stack.pop(), stack.pop()) else {
                    return None;
                };
                Const::I32(match op {
                    Operator::I32Add => a.wrapping_add(b),
                    Operator::I32Sub => a.wrapping_sub(b),
                    _ => a.wrapping_mul(b),
                })
            }
            Operator::I64Add | Operator::I64Sub | Operator::I64Mul => {
                let (Some(Const::I64(b)), Some(Const::I64(a))) = (stack.pop(), stack.pop()) else {
                    return None;
                };
                Const::I64(match op {
                    Operator::I64Add => a.wrapping_add(b),
                    Operator::I64Sub => a.wrapping_sub(b),
                    _ => a.wrapping_mul(b),
                })
            }
            _ => return None,
        };
        stack.push(value);
    }
    match stack.as_slice() {
        [c] => Some(*c),
        _ => None,
    }
}

fn kind_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Func => "f",
        Kind::Table => "t",
        Kind::Memory => "m",
        Kind::Global => "g",
        Kind::Tag => "e",
    }
}

/// Re-encodes one member's items into `M`'s index spaces, folding constant
/// globals.
struct MemberMap<'m, 'a, 'g> {
    merge: &'m Merge<'a, 'g>,
    member: usize,
}

impl MemberMap<'_, '_, '_> {
    fn folded(&self, global: u32) -> Option<Const> {
        let imported = self.merge.members[self.member].imported[Kind::Global.slot()].len() as u32;
        let target = if global >= imported {
            Target::Defined {
                member: self.member,
                index: global - imported,
            }
        } else {
            self.merge.resolved[&(self.member, Kind::Global, global)]
        };
        match target {
            Target::Defined { member, index } => {
                self.merge.consts.get(&(member, index)).copied().flatten()
            }
            Target::External(_) => None,
        }
    }
}

impl Reencode for MemberMap<'_, '_, '_> {
    type Error = std::convert::Infallible;
    fn function_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.map(self.member, Kind::Func, i))
    }
    fn table_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.map(self.member, Kind::Table, i))
    }
    fn memory_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.map(self.member, Kind::Memory, i))
    }
    fn global_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.map(self.member, Kind::Global, i))
    }
    fn tag_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.map(self.member, Kind::Tag, i))
    }
    fn type_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.type_bases[self.member] + i)
    }
    fn data_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.data_bases[self.member] + i)
    }
    fn element_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.merge.elem_bases[self.member] + i)
    }
    fn const_expr(
        &mut self,
        expr: wasmparser::ConstExpr,
    ) -> Result<ConstExpr, reencode::Error<Self::Error>> {
        // Constant globals are already folded: only look them up.
        match eval_const(&expr, |global| self.folded(global)) {
            Some(Const::I32(v)) => Ok(ConstExpr::i32_const(v)),
            Some(Const::I64(v)) => Ok(ConstExpr::i64_const(v)),
            None => reencode::utils::const_expr(self, expr),
        }
    }
    fn instruction<'x>(
        &mut self,
        op: Operator<'x>,
    ) -> Result<wasm_encoder::Instruction<'x>, reencode::Error<Self::Error>> {
        if let Operator::GlobalGet { global_index } = op {
            match self.folded(global_index) {
                Some(Const::I32(v)) => return Ok(wasm_encoder::Instruction::I32Const(v)),
                Some(Const::I64(v)) => return Ok(wasm_encoder::Instruction::I64Const(v)),
                None => {}
            }
        }
        reencode::utils::instruction(self, op)
    }
}

/// Maps the input component's core indices to the output's while the
/// component is re-emitted.
#[derive(Default)]
struct Remap {
    items: [HashMap<u32, u32>; 5],
    instances: HashMap<u32, u32>,
    modules: HashMap<u32, u32>,
    missing: Option<String>,
}

impl Remap {
    fn get(&mut self, kind: Kind, i: u32) -> u32 {
        match self.items[kind.slot()].get(&i) {
            Some(n) => *n,
            None => {
                self.missing.get_or_insert(format!("core {kind:?} {i}"));
                0
            }
        }
    }
}

impl Reencode for Remap {
    type Error = std::convert::Infallible;
    fn function_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Kind::Func, i))
    }
    fn table_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Kind::Table, i))
    }
    fn memory_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Kind::Memory, i))
    }
    fn global_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Kind::Global, i))
    }
    fn tag_index(&mut self, i: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.get(Kind::Tag, i))
    }
}

impl ReencodeComponent for Remap {
    fn instance_index(&mut self, i: u32) -> u32 {
        match self.instances.get(&i) {
            Some(n) => *n,
            None => {
                self.missing.get_or_insert(format!("core instance {i}"));
                0
            }
        }
    }
    fn module_index(&mut self, i: u32) -> u32 {
        match self.modules.get(&i) {
            Some(n) => *n,
            None => {
                self.missing.get_or_insert(format!("core module {i}"));
                0
            }
        }
    }
}

/// The output component, with counters for its core index spaces.
struct Out {
    component: wasm_encoder::Component,
    next: [u32; 5],
    next_instance: u32,
    next_module: u32,
}

impl Out {
    fn alias(&mut self, instance: u32, kind: Kind, name: &str) -> u32 {
        let mut s = ComponentAliasSection::new();
        s.alias(wasm_encoder::Alias::CoreInstanceExport {
            instance,
            kind: kind.export_kind(),
            name,
        });
        self.component.section(&s);
        let index = self.next[kind.slot()];
        self.next[kind.slot()] += 1;
        index
    }
}

/// Flattens a component made by `wit_component::Linker` (see the module
/// documentation). The output is validated before it is returned.
///
/// # Errors
/// [`FlattenError::Wasm`] when the input (or, a bug, the output) does not
/// validate; [`FlattenError::Unsupported`] when the graph has a shape this
/// pass does not merge; [`FlattenError::Encode`] when an item cannot be
/// re-encoded.
pub fn flatten(input: &[u8]) -> Result<Flattened, FlattenError> {
    let graph = Graph::read(input)?;
    let set = graph.merge_set();
    if set.is_empty() {
        return Err(FlattenError::Unsupported(
            "no core instance to merge".into(),
        ));
    }
    let consumers = graph.consumers();
    // Bags only merged instances consume are wiring the merge resolves.
    let dropped_bags: HashSet<u32> = graph
        .instances
        .iter()
        .enumerate()
        .filter(|(i, inst)| {
            matches!(inst, CoreInstance::Bag(_))
                && consumers
                    .get(&(*i as u32))
                    .is_some_and(|c| c.iter().all(|c| set.contains(c)))
        })
        .map(|(i, _)| i as u32)
        .collect();
    let last_member = *set.iter().max().expect("not empty");
    // The merged start functions run from the starter, placed where the last
    // merged instance was (after every kept instantiation: the fixup), so a
    // library's own start runs later than it did, though in the same order
    // relative to the other members. No kept instance may tell: none may
    // have a start function or data segments of its own (wit-component's
    // fixup has one element segment into the lowered-imports table).
    let kept: Vec<u32> = graph
        .instances
        .iter()
        .enumerate()
        .filter(|(i, inst)| {
            matches!(inst, CoreInstance::Instantiate { .. }) && !set.contains(&(*i as u32))
        })
        .map(|(i, _)| i as u32)
        .collect();
    let last_kept = kept.iter().copied().max();
    for k in &kept {
        let CoreInstance::Instantiate { module, .. } = &graph.instances[*k as usize] else {
            continue;
        };
        let m = Member::parse(*k, &[], graph.module_bytes(*module))?;
        if m.start.is_some() || !m.data.is_empty() {
            return Err(FlattenError::Unsupported(format!(
                "kept instance {k} has a start function or data segments"
            )));
        }
    }
    let merged_modules: HashSet<u32> = set
        .iter()
        .map(|i| match &graph.instances[*i as usize] {
            CoreInstance::Instantiate { module, .. } => *module,
            CoreInstance::Bag(_) => unreachable!("only instantiations are merged"),
        })
        .collect();

    let mut merge = Merge::new(&graph, &set)?;
    if let Some(last_kept) = last_kept
        && last_member < last_kept
    {
        return Err(FlattenError::Unsupported(format!(
            "the merged start functions would run before kept instance {last_kept}"
        )));
    }
    // What the kept items (canonical functions, kept instances and bags)
    // reference: only those aliases of merged instances become exports of M.
    let mut used: HashSet<(Kind, u32)> = HashSet::new();
    let mut old_instance = 0u32;
    for payload in top_level(input) {
        match payload? {
            Payload::ComponentCanonicalSection(s) => {
                for func in s {
                    let mut probe = Probe::default();
                    probe.parse_component_canonical(
                        &mut wasm_encoder::CanonicalFunctionSection::new(),
                        func?,
                    )?;
                    used.extend(probe.refs);
                }
            }
            Payload::InstanceSection(s) => {
                for instance in s {
                    let instance = instance?;
                    let old = old_instance;
                    old_instance += 1;
                    if set.contains(&old) || dropped_bags.contains(&old) {
                        continue;
                    }
                    let mut probe = Probe::default();
                    probe.parse_instance(&mut InstanceSection::new(), instance)?;
                    used.extend(probe.refs);
                }
            }
            _ => {}
        }
    }
    let mut wanted = Vec::new();
    for kind in Kind::ALL {
        for (index, origin) in graph.items[kind.slot()].iter().enumerate() {
            if let Origin::Alias { instance, name } = origin
                && set.contains(instance)
                && used.contains(&(kind, index as u32))
            {
                wanted.push((*instance, kind, name.clone()));
            }
        }
    }
    let (merged_module, export_names) = merge.encode(&wanted)?;
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(&merged_module)
        .map_err(|e| FlattenError::Encode(format!("the merged module does not validate: {e}")))?;
    let starter = starter_module();

    let mut remap = Remap::default();
    let mut out = Out {
        component: wasm_encoder::Component::new(),
        next: [0; 5],
        next_instance: 0,
        next_module: 0,
    };
    let mut merged_module_index = None;
    let mut merged_instance: Option<u32> = None;
    // Aliases of merged instances met before `M` is instantiated: (kind, old index, instance, name).
    let mut deferred: Vec<(Kind, u32, u32, String)> = Vec::new();
    let mut old_next = [0u32; 5];
    let mut old_instance = 0u32;
    let mut old_module = 0u32;
    let mut kept_instances = 0usize;

    // Instantiates `M` (with a bag of its outside imports) and emits the
    // aliases that waited for it.
    let flush = |out: &mut Out,
                 remap: &mut Remap,
                 deferred: &mut Vec<(Kind, u32, u32, String)>,
                 merged_instance: &mut Option<u32>,
                 merged_module_index: Option<u32>|
     -> Result<(), FlattenError> {
        if merged_instance.is_some() {
            return Ok(());
        }
        let module = merged_module_index.ok_or_else(|| {
            FlattenError::Unsupported("an instance precedes the merged modules".into())
        })?;
        let mut bag_items = Vec::new();
        for kind in Kind::ALL {
            for (slot, item) in merge.externals[kind.slot()].iter().enumerate() {
                let Some(new) = remap.items[kind.slot()].get(item) else {
                    return Err(FlattenError::Unsupported(format!(
                        "the merged module needs core {kind:?} {item} before it exists"
                    )));
                };
                bag_items.push((
                    format!("{}{slot}", kind_prefix(kind)),
                    kind.export_kind(),
                    *new,
                ));
            }
        }
        let mut s = InstanceSection::new();
        s.export_items(bag_items.iter().map(|(n, k, i)| (n.as_str(), *k, *i)));
        s.instantiate(module, [("", ModuleArg::Instance(out.next_instance))]);
        out.component.section(&s);
        let instance = out.next_instance + 1;
        out.next_instance += 2;
        *merged_instance = Some(instance);
        for (kind, old, inst, name) in deferred.drain(..) {
            let new = out.alias(instance, kind, &export_names[&(inst, name)]);
            remap.items[kind.slot()].insert(old, new);
        }
        Ok(())
    };

    for payload in top_level(input) {
        let payload = payload?;
        match payload {
            Payload::Version { .. } => {}
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                let old = old_module;
                old_module += 1;
                if merged_modules.contains(&old) {
                    if merged_module_index.is_none() {
                        for bytes in [&merged_module, &starter] {
                            out.component.section(&RawSection {
                                id: ComponentSectionId::CoreModule as u8,
                                data: bytes,
                            });
                        }
                        merged_module_index = Some(out.next_module);
                        out.next_module += 2;
                    }
                    continue;
                }
                out.component.section(&RawSection {
                    id: ComponentSectionId::CoreModule as u8,
                    data: &input[unchecked_range],
                });
                remap.modules.insert(old, out.next_module);
                out.next_module += 1;
            }
            Payload::ComponentSection {
                unchecked_range, ..
            } => {
                out.component.section(&RawSection {
                    id: ComponentSectionId::Component as u8,
                    data: &input[unchecked_range],
                });
            }
            Payload::InstanceSection(s) => {
                for instance in s {
                    let instance = instance?;
                    let old = old_instance;
                    old_instance += 1;
                    if set.contains(&old) {
                        if old == last_member {
                            flush(
                                &mut out,
                                &mut remap,
                                &mut deferred,
                                &mut merged_instance,
                                merged_module_index,
                            )?;
                            let mut s = InstanceSection::new();
                            s.instantiate(
                                merged_module_index.expect("flushed") + 1,
                                [("m", ModuleArg::Instance(merged_instance.expect("flushed")))],
                            );
                            out.component.section(&s);
                            out.next_instance += 1;
                        }
                        continue;
                    }
                    if dropped_bags.contains(&old) {
                        continue;
                    }
                    let mut probe = Probe::default();
                    probe.parse_instance(&mut InstanceSection::new(), instance.clone())?;
                    if probe
                        .instances
                        .iter()
                        .any(|i| set.contains(i) || dropped_bags.contains(i))
                    {
                        return Err(FlattenError::Unsupported(format!(
                            "core instance {old} takes a merged instance whole"
                        )));
                    }
                    if needs_flush(&probe.refs, &deferred) {
                        flush(
                            &mut out,
                            &mut remap,
                            &mut deferred,
                            &mut merged_instance,
                            merged_module_index,
                        )?;
                    }
                    let mut s = InstanceSection::new();
                    remap.parse_instance(&mut s, instance)?;
                    check(&mut remap)?;
                    out.component.section(&s);
                    remap.instances.insert(old, out.next_instance);
                    out.next_instance += 1;
                    kept_instances += 1;
                }
            }
            Payload::ComponentAliasSection(s) => {
                for alias in s {
                    let alias = alias?;
                    match alias {
                        ComponentAlias::CoreInstanceExport {
                            kind,
                            instance_index,
                            name,
                        } => {
                            let kind = Kind::of(kind);
                            let old = old_next[kind.slot()];
                            old_next[kind.slot()] += 1;
                            if set.contains(&instance_index) {
                                if !used.contains(&(kind, old)) {
                                    // Wiring the merge resolved: nothing kept names it.
                                    continue;
                                }
                                match merged_instance {
                                    Some(m) => {
                                        let new = out.alias(
                                            m,
                                            kind,
                                            &export_names[&(instance_index, name.to_owned())],
                                        );
                                        remap.items[kind.slot()].insert(old, new);
                                    }
                                    None => {
                                        deferred.push((kind, old, instance_index, name.to_owned()))
                                    }
                                }
                                continue;
                            }
                            if dropped_bags.contains(&instance_index) {
                                return Err(FlattenError::Unsupported(format!(
                                    "an alias of wiring bag {instance_index}"
                                )));
                            }
                            let new = out.alias(remap.instance_index(instance_index), kind, name);
                            check(&mut remap)?;
                            remap.items[kind.slot()].insert(old, new);
                        }
                        other => {
                            let mut s = ComponentAliasSection::new();
                            s.alias(remap.component_alias(other)?);
                            check(&mut remap)?;
                            out.component.section(&s);
                        }
                    }
                }
            }
            Payload::ComponentCanonicalSection(s) => {
                for func in s {
                    let func = func?;
                    let mut probe = Probe::default();
                    probe.parse_component_canonical(
                        &mut wasm_encoder::CanonicalFunctionSection::new(),
                        func.clone(),
                    )?;
                    if needs_flush(&probe.refs, &deferred) {
                        flush(
                            &mut out,
                            &mut remap,
                            &mut deferred,
                            &mut merged_instance,
                            merged_module_index,
                        )?;
                    }
                    let is_lift = matches!(func, CanonicalFunction::Lift { .. });
                    let mut s = wasm_encoder::CanonicalFunctionSection::new();
                    remap.parse_component_canonical(&mut s, func)?;
                    check(&mut remap)?;
                    out.component.section(&s);
                    if !is_lift {
                        let old = old_next[Kind::Func.slot()];
                        old_next[Kind::Func.slot()] += 1;
                        remap.items[Kind::Func.slot()].insert(old, out.next[Kind::Func.slot()]);
                        out.next[Kind::Func.slot()] += 1;
                    }
                }
            }
            // Component-level names index spaces this pass renumbers.
            Payload::CustomSection(c) if c.name() == "component-name" => {}
            Payload::CustomSection(c) => {
                out.component.section(&wasm_encoder::CustomSection {
                    name: c.name().into(),
                    data: c.data().into(),
                });
            }
            other => {
                // Types, imports, exports, component instances, core types:
                // they name no core function, table, memory or global.
                remap.parse_component_payload(&mut out.component, other, input)?;
                check(&mut remap)?;
            }
        }
    }
    if merged_instance.is_none() {
        return Err(FlattenError::Unsupported(
            "the merged module was never instantiated".into(),
        ));
    }
    let component = out.component.finish();
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(&component)
        .map_err(|e| {
            FlattenError::Encode(format!("the flattened component does not validate: {e}"))
        })?;
    Ok(Flattened {
        component,
        merged_instances: set.len(),
        kept_instances,
        imports: merge.externals.iter().map(Vec::len).sum(),
    })
}

fn needs_flush(refs: &[(Kind, u32)], deferred: &[(Kind, u32, u32, String)]) -> bool {
    refs.iter()
        .any(|(k, i)| deferred.iter().any(|(dk, di, _, _)| dk == k && di == i))
}

fn check(remap: &mut Remap) -> Result<(), FlattenError> {
    match remap.missing.take() {
        Some(what) => Err(FlattenError::Unsupported(format!(
            "an item refers to {what}, which the flattened component does not have"
        ))),
        None => Ok(()),
    }
}

/// `(module (import "m" START_EXPORT (func)) (start 0))`.
fn starter_module() -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut imports = ImportSection::new();
    imports.import("m", START_EXPORT, EntityType::Function(0));
    let mut module = Module::new();
    module.section(&types);
    module.section(&imports);
    module.section(&StartSection { function_index: 0 });
    module.finish()
}

/// Counts what matters for instantiation cost in a component: core modules,
/// core instances, and per module the active element segments that wasmtime
/// cannot initialize lazily (imported table, or an offset that is not a
/// literal constant).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Structure {
    /// Core modules in the component.
    pub core_modules: usize,
    /// Core modules that define at least one function.
    pub modules_with_code: usize,
    /// Core instances (instantiations and bags).
    pub core_instances: usize,
    /// Active element segments into a table the module imports.
    pub segments_into_imported_tables: usize,
    /// Active element segments whose offset is not one `i32.const`.
    pub segments_at_computed_offsets: usize,
    /// Functions imported by modules, summed over modules.
    pub function_imports: usize,
}

/// Reads the [`Structure`] of a component.
///
/// # Errors
/// [`FlattenError::Wasm`] when it does not parse.
pub fn structure(component: &[u8]) -> Result<Structure, FlattenError> {
    let mut s = Structure::default();
    for payload in top_level(component) {
        match payload? {
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                s.core_modules += 1;
                let m = Member::parse(0, &[], &component[unchecked_range])?;
                if !m.funcs.is_empty() {
                    s.modules_with_code += 1;
                }
                s.function_imports += m.imported[Kind::Func.slot()].len();
                let imported_tables = m.imported[Kind::Table.slot()].len() as u32;
                for e in &m.elements {
                    if let wasmparser::ElementKind::Active {
                        table_index,
                        offset_expr,
                    } = &e.kind
                    {
                        if table_index.unwrap_or(0) < imported_tables {
                            s.segments_into_imported_tables += 1;
                        }
                        let ops: Vec<_> = offset_expr
                            .get_operators_reader()
                            .into_iter()
                            .collect::<Result<_, _>>()?;
                        if !matches!(ops.as_slice(), [Operator::I32Const { .. }, Operator::End]) {
                            s.segments_at_computed_offsets += 1;
                        }
                    }
                }
            }
            Payload::InstanceSection(i) => s.core_instances += i.count() as usize,
            _ => {}
        }
    }
    Ok(s)
}
