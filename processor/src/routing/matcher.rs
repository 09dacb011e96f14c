//! A rule set compiled into one matcher, so that the cost of matching an event grows with
//! the event, not with the number of rules. Each pattern's `$or`s are expanded into
//! alternatives; an alternative with a field of rare exact values (or prefixes, suffixes,
//! wildcards that start or end with text, or their ignore-case forms, lower-cased) is indexed
//! by them (hash lookups per event leaf find it), one with a field of rare numeric ranges or
//! networks by those (a binary search per numeric or address leaf finds it); one made only
//! of `exists` and `anything-but` conditions is decided exactly, one bit an alternative, by
//! `exclusions::Exclusions`; the rest go into `quamina` automatons. The index and the
//! automatons only propose: each candidate is confirmed by [`Pattern::matches`], so a false
//! positive costs a recheck and never a wrong route. What an automaton would miss is
//! kept from it: conditions quamina does not express (`anything-but` with `prefix`, `suffix`,
//! `wildcard` or `equals-ignore-case`, over mixed or numeric values; `prefix` and `suffix`
//! ignoring case; wildcards with escapes; IPv6 networks),
//! `exists: false`, and `exists` beside other conditions on one field are left out of the
//! automaton's copy of the pattern, which then proposes more. (quamina 0.7.0, as the property
//! tests found it: `numeric` lets strings through, a numeric `anything-but` lets other
//! patterns' exact numbers match strings, `exists` mixed with values on a field misses events,
//! two `exists: false` miss an event that has neither field, and IPv6 `cidr` misses
//! addresses.)

use std::collections::{BTreeSet, HashMap};

use quamina::{MatcherBuildMode, Quamina};
use serde_json::{Map, Value};

use super::exclusions::Exclusions;
use super::pattern::{
    address_key, Compare, Condition, Excluded, Field, Pattern, PatternError, Scalar,
};

/// `$or` expansions of one pattern, at most.
const MAX_ALTERNATIVES: usize = 128;

/// Automaton patterns per automaton. quamina 0.7.0 panics when more than 255 patterns leave
/// one state of its automaton (a `u8` count); automatons of at most 200 stay clear of that.
const SHARD_PATTERNS: usize = 200;

/// One automaton and the patterns in it.
struct Shard {
    automaton: Quamina<usize>,
    members: Vec<usize>,
    /// Set when the automaton failed: its members are then candidates for every event.
    broken: bool,
}

impl Shard {
    fn new() -> Shard {
        let mut automaton = Quamina::new();
        // Wildcards as DFAs: matching stays flat as wildcard rules are added (adding them
        // costs more, once, at load).
        automaton.set_matcher_build_mode(MatcherBuildMode::BuiltForSpeed);
        Shard {
            automaton,
            members: Vec::new(),
            broken: false,
        }
    }

    /// What the automaton proposes for `event`; everything it holds if it cannot say.
    fn propose(&self, event: &[u8], into: &mut Vec<usize>) {
        if self.broken {
            into.extend_from_slice(&self.members);
            return;
        }
        let proposed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.automaton.matches_for_event(event)
        }));
        match proposed {
            Ok(Ok(found)) => into.extend(found),
            _ => into.extend_from_slice(&self.members),
        }
    }
}

/// An alternative goes to the index when each value it is indexed under is shared by at most
/// this many alternatives; a commoner value would make every event that carries it
/// a candidate for all of them.
const INDEX_LIMIT: usize = 8;

/// What an alternative can be indexed under: an exact value, or a prefix or a suffix of a
/// string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Exact {
    Text(String),
    /// The number's bits, with -0 as 0.
    Number(u64),
    Bool(bool),
    Null,
    Prefix(String),
    Suffix(String),
    /// The ignore-case forms, lower-cased: looked up with the leaf lower-cased.
    TextFolded(String),
    PrefixFolded(String),
    SuffixFolded(String),
}

impl Exact {
    fn of(scalar: &Scalar) -> Exact {
        match scalar {
            Scalar::Text(s) => Exact::Text(s.clone()),
            Scalar::Number(n) => Exact::Number(if *n == 0.0 { 0 } else { n.to_bits() }),
            Scalar::Bool(b) => Exact::Bool(*b),
            Scalar::Null => Exact::Null,
        }
    }
}

type IndexKey = (String, Exact);

/// The numbers a `numeric` condition (or an exact number) can match, as a closed interval:
/// at least as wide as the condition (its open ends included), which the recheck narrows.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Span {
    low: f64,
    high: f64,
}

impl Span {
    fn of(comparisons: &[(Compare, f64)]) -> Span {
        let mut span = Span {
            low: f64::NEG_INFINITY,
            high: f64::INFINITY,
        };
        for (compare, bound) in comparisons {
            match compare {
                Compare::Less | Compare::LessOrEqual => span.high = span.high.min(*bound),
                Compare::Greater | Compare::GreaterOrEqual => span.low = span.low.max(*bound),
                Compare::Equal => {
                    span.low = span.low.max(*bound);
                    span.high = span.high.min(*bound);
                }
            }
        }
        span
    }
}

/// What an alternative is indexed under on one field.
#[derive(Clone, Debug, PartialEq)]
enum Anchor {
    /// Exact values, all prefixes, or all suffixes.
    Values(Vec<Exact>),
    /// Numeric ranges.
    Spans(Vec<Span>),
    /// Networks, as ranges of addresses ([`network_span`]).
    Networks(Vec<Span>),
}

/// A field of an alternative it can be indexed under: its path and the anchor.
type AnchorField = (String, Anchor);

/// What a condition can be indexed under as a value: an exact value, a prefix, a suffix, or a
/// wildcard's leading text (else its trailing text).
fn exact_of(condition: &Condition) -> Option<Exact> {
    match condition {
        Condition::Exact(scalar) => Some(Exact::of(scalar)),
        Condition::Prefix(p) => Some(Exact::Prefix(p.clone())),
        Condition::Suffix(s) => Some(Exact::Suffix(s.clone())),
        Condition::EqualsIgnoreCase(s) => Some(Exact::TextFolded(s.to_lowercase())),
        Condition::PrefixIgnoreCase(p) => Some(Exact::PrefixFolded(p.to_lowercase())),
        Condition::SuffixIgnoreCase(s) => Some(Exact::SuffixFolded(s.to_lowercase())),
        Condition::Wildcard(w) => match w.parts() {
            [text] => Some(Exact::Text(text.clone())),
            [first, ..] if !first.is_empty() => Some(Exact::Prefix(first.clone())),
            [.., last] if !last.is_empty() => Some(Exact::Suffix(last.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// The numbers a condition can match, if it only matches numbers.
fn span_of(condition: &Condition) -> Option<Span> {
    match condition {
        Condition::Numeric(comparisons) => Some(Span::of(comparisons)),
        Condition::Exact(Scalar::Number(n)) => Some(Span { low: *n, high: *n }),
        _ => None,
    }
}

/// The addresses a `cidr` condition matches, as a range of [`address_key`]s made floats. The
/// rounding is monotonic, so an address in the network stays in the range (the range may
/// take in neighbours, which the recheck turns down).
fn network_span(condition: &Condition) -> Option<Span> {
    match condition {
        Condition::Cidr(network) => {
            let (low, high) = network.addresses();
            Some(Span {
                low: low as f64,
                high: high as f64,
            })
        }
        _ => None,
    }
}

/// The fields of an `$or`-free pattern that can be indexed: those whose conditions are all
/// exact values, all prefixes or all suffixes (wildcards counted by their text), or all
/// numeric ranges.
fn anchor_fields(pattern: &Pattern, prefix: &str, into: &mut Vec<AnchorField>) {
    for (name, field) in &pattern.fields {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match field {
            Field::Object(inner) => anchor_fields(inner, &path, into),
            Field::Leaf(conditions) => {
                let keys: Option<Vec<Exact>> = conditions.iter().map(exact_of).collect();
                let kind = |k: &Exact| match k {
                    Exact::Prefix(_) => 1,
                    Exact::Suffix(_) => 2,
                    Exact::TextFolded(_) => 3,
                    Exact::PrefixFolded(_) => 4,
                    Exact::SuffixFolded(_) => 5,
                    _ => 0,
                };
                match keys {
                    Some(keys) if keys.windows(2).all(|w| kind(&w[0]) == kind(&w[1])) => {
                        into.push((path.clone(), Anchor::Values(keys)));
                    }
                    _ => {}
                }
                if let Some(spans) = conditions.iter().map(span_of).collect() {
                    into.push((path.clone(), Anchor::Spans(spans)));
                }
                if let Some(networks) = conditions.iter().map(network_span).collect() {
                    into.push((path, Anchor::Networks(networks)));
                }
            }
        }
    }
}

/// The numeric ranges of one field, indexed: its distinct finite bounds cut the numbers into
/// units (below the first bound, each bound, between two, above the last), and each unit
/// holds the alternatives whose ranges cover it.
#[derive(Default)]
struct RangeIndex {
    bounds: Vec<f64>,
    /// `2 · bounds.len() + 1` units.
    units: Vec<Vec<usize>>,
    /// While compiling: how many ranges cover each unit.
    coverage: Vec<usize>,
}

impl RangeIndex {
    fn new(spans: &[Span]) -> RangeIndex {
        let mut bounds: Vec<f64> = spans
            .iter()
            .flat_map(|s| [s.low, s.high])
            .filter(|b| b.is_finite())
            .collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let units = 2 * bounds.len() + 1;
        let mut index = RangeIndex {
            bounds,
            units: vec![Vec::new(); units],
            coverage: vec![0; units],
        };
        for span in spans {
            for unit in index.units_of(*span) {
                index.coverage[unit] += 1;
            }
        }
        index
    }

    /// The unit `value` falls in.
    fn unit(&self, value: f64) -> usize {
        let below = self.bounds.partition_point(|b| *b < value);
        if self.bounds.get(below) == Some(&value) {
            2 * below + 1
        } else {
            2 * below
        }
    }

    fn units_of(&self, span: Span) -> std::ops::Range<usize> {
        if span.low > span.high {
            // Matches no number: no unit.
            return 0..0;
        }
        self.unit(span.low)..self.unit(span.high) + 1
    }

    /// The most ranges covering any unit of `span`.
    fn sharing(&self, span: Span) -> usize {
        self.units_of(span)
            .map(|unit| self.coverage[unit])
            .max()
            .unwrap_or(0)
    }

    /// The most ranges covering any unit of any of `spans`.
    fn widest_sharing(&self, spans: &[Span]) -> usize {
        spans
            .iter()
            .map(|span| self.sharing(*span))
            .max()
            .unwrap_or(usize::MAX)
    }

    fn insert(&mut self, span: Span, pattern: usize) {
        for unit in self.units_of(span) {
            self.units[unit].push(pattern);
        }
    }

    fn candidates(&self, value: f64) -> &[usize] {
        &self.units[self.unit(value)]
    }
}

/// The index key of a value at a path: a hash, so that an event's leaves are looked up
/// without building their paths. Two keys that collide only add a candidate, which the
/// recheck turns down.
fn key_hash(path: &str, value: &Exact) -> u64 {
    let value = match value {
        Exact::Text(s) => LeafRef::Text(s),
        Exact::Number(bits) => LeafRef::Number(*bits),
        Exact::Bool(b) => LeafRef::Bool(*b),
        Exact::Null => LeafRef::Null,
        Exact::Prefix(p) => LeafRef::Prefix(p),
        Exact::Suffix(s) => LeafRef::Suffix(s),
        Exact::TextFolded(s) => LeafRef::TextFolded(s),
        Exact::PrefixFolded(p) => LeafRef::PrefixFolded(p),
        Exact::SuffixFolded(s) => LeafRef::SuffixFolded(s),
    };
    leaf_hash(path, value)
}

/// An event leaf, borrowed, hashed as its [`Exact`] would be.
#[derive(Hash)]
enum LeafRef<'a> {
    Text(&'a str),
    Number(u64),
    Bool(bool),
    Null,
    Prefix(&'a str),
    Suffix(&'a str),
    TextFolded(&'a str),
    PrefixFolded(&'a str),
    SuffixFolded(&'a str),
}

fn leaf_hash(path: &str, value: LeafRef<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    path.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

/// Calls `visit` with every leaf of an event and its path: an array's elements at the
/// array's path.
fn visit_leaves(value: &Value, path: &mut String, visit: &mut impl FnMut(&str, LeafRef<'_>)) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map {
                let length = path.len();
                if length > 0 {
                    path.push('.');
                }
                path.push_str(name);
                visit_leaves(inner, path, visit);
                path.truncate(length);
            }
        }
        Value::Array(items) => {
            for item in items {
                visit_leaves(item, path, visit);
            }
        }
        leaf => {
            let value = match leaf {
                Value::String(s) => LeafRef::Text(s),
                Value::Number(n) => match n.as_f64() {
                    Some(n) => LeafRef::Number(if n == 0.0 { 0 } else { n.to_bits() }),
                    None => return,
                },
                Value::Bool(b) => LeafRef::Bool(*b),
                _ => LeafRef::Null,
            };
            visit(path, value);
        }
    }
}

/// Each pattern's alternatives ($or expanded), each with the fields an index could anchor
/// it on.
type Expanded = Vec<Vec<(Pattern, Vec<AnchorField>)>>;

/// The `$or`s of every pattern expanded, with their anchor fields; refuses a pattern whose
/// `$or`s combine into too many alternatives.
fn expand_all(patterns: &[Pattern]) -> Result<Expanded, PatternError> {
    let mut expanded = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let alternatives = expand(pattern);
        if alternatives.len() > MAX_ALTERNATIVES {
            return Err(PatternError {
                at: "$or".to_owned(),
                message: format!(
                    "the $or lists combine into {} alternatives, more than {MAX_ALTERNATIVES}",
                    alternatives.len()
                ),
            });
        }
        let with_fields: Vec<(Pattern, Vec<AnchorField>)> = alternatives
            .into_iter()
            .map(|alternative| {
                let mut fields = Vec::new();
                anchor_fields(&alternative, "", &mut fields);
                (alternative, fields)
            })
            .collect();
        expanded.push(with_fields);
    }
    Ok(expanded)
}

/// How many alternatives each exact value would index, and how many ranges cover each
/// stretch of numbers on each field: what makes an anchor rare enough to index.
struct Rarity {
    sharing: HashMap<IndexKey, usize>,
    ranges: HashMap<String, RangeIndex>,
    networks: HashMap<String, RangeIndex>,
}

/// Each pattern's alternatives with the anchor chosen for it (none: to the automatons), and
/// the range indexes the anchors on numbers go to.
struct Anchored {
    patterns: Vec<Vec<(Pattern, Option<AnchorField>)>>,
    ranges: HashMap<String, RangeIndex>,
    networks: HashMap<String, RangeIndex>,
}

impl Rarity {
    fn of(expanded: &Expanded) -> Rarity {
        let mut sharing: HashMap<IndexKey, usize> = HashMap::new();
        let mut spans: HashMap<String, Vec<Span>> = HashMap::new();
        let mut networks: HashMap<String, Vec<Span>> = HashMap::new();
        for (_, fields) in expanded.iter().flatten() {
            let mut keys: Vec<IndexKey> = Vec::new();
            for (path, anchor) in fields {
                match anchor {
                    Anchor::Values(values) => {
                        keys.extend(values.iter().map(|v| (path.clone(), v.clone())))
                    }
                    Anchor::Spans(of_field) => spans
                        .entry(path.clone())
                        .or_default()
                        .extend_from_slice(of_field),
                    Anchor::Networks(of_field) => networks
                        .entry(path.clone())
                        .or_default()
                        .extend_from_slice(of_field),
                }
            }
            keys.sort();
            keys.dedup();
            for key in keys {
                *sharing.entry(key).or_default() += 1;
            }
        }
        let indexed = |by_path: HashMap<String, Vec<Span>>| {
            by_path
                .into_iter()
                .map(|(path, spans)| (path, RangeIndex::new(&spans)))
                .collect()
        };
        Rarity {
            sharing,
            ranges: indexed(spans),
            networks: indexed(networks),
        }
    }

    /// How many alternatives share the commonest value (or span) of `anchor` on `path`.
    fn of_anchor(&self, path: &String, anchor: &Anchor) -> usize {
        match anchor {
            Anchor::Values(values) => values
                .iter()
                .map(|v| self.sharing[&(path.clone(), v.clone())])
                .max()
                .unwrap_or(usize::MAX),
            Anchor::Spans(of_field) => self.ranges[path].widest_sharing(of_field),
            Anchor::Networks(of_field) => self.networks[path].widest_sharing(of_field),
        }
    }

    /// Each alternative's rarest anchor, if at most `index_limit` alternatives share it.
    fn choose_anchors(self, expanded: Expanded, index_limit: usize) -> Anchored {
        let patterns = expanded
            .into_iter()
            .map(|alternatives| {
                alternatives
                    .into_iter()
                    .map(|(alternative, fields)| {
                        let anchor = fields
                            .into_iter()
                            .map(|field| (self.of_anchor(&field.0, &field.1), field))
                            .min_by_key(|(rarity, _)| *rarity)
                            .filter(|(rarity, _)| *rarity <= index_limit)
                            .map(|(_, field)| field);
                        (alternative, anchor)
                    })
                    .collect()
            })
            .collect();
        Anchored {
            patterns,
            ranges: self.ranges,
            networks: self.networks,
        }
    }
}

/// What is indexed on a field besides exact values: the byte lengths of its prefixes and
/// suffixes, and of its lower-cased ones; and whether any ignore-case value is.
#[derive(Default)]
struct Affixes {
    prefixes: BTreeSet<usize>,
    suffixes: BTreeSet<usize>,
    folded_prefixes: BTreeSet<usize>,
    folded_suffixes: BTreeSet<usize>,
    folded: bool,
}

/// Indexes `spans` of pattern `pattern` in the range index of `path` among `indexes`.
fn insert_spans(
    indexes: &mut HashMap<String, RangeIndex>,
    path: &str,
    spans: Vec<Span>,
    pattern: usize,
) {
    let range = indexes
        .get_mut(path)
        .expect("every anchored field has a range index");
    for span in spans {
        range.insert(span, pattern);
    }
}

/// [`CompiledPatterns`] as they are put together: the indexes, and the automatons filled
/// shard by shard.
struct Builder {
    index: HashMap<u64, Vec<usize>>,
    affixes: HashMap<String, Affixes>,
    ranges: HashMap<String, RangeIndex>,
    networks: HashMap<String, RangeIndex>,
    shards: Vec<Shard>,
    /// Patterns in the last shard.
    in_shard: usize,
    always: Vec<usize>,
    exclusions: Exclusions,
}

impl Builder {
    fn new(ranges: HashMap<String, RangeIndex>, networks: HashMap<String, RangeIndex>) -> Builder {
        Builder {
            index: HashMap::new(),
            affixes: HashMap::new(),
            ranges,
            networks,
            shards: vec![Shard::new()],
            in_shard: 0,
            always: Vec::new(),
            exclusions: Exclusions::default(),
        }
    }

    /// Indexes an alternative of pattern `pattern_index` on its anchor.
    fn index(&mut self, pattern_index: usize, (path, anchor): AnchorField) {
        match anchor {
            Anchor::Values(values) => {
                for value in values {
                    let affixes = self.affixes.entry(path.clone()).or_default();
                    match &value {
                        Exact::Prefix(p) => {
                            affixes.prefixes.insert(p.len());
                        }
                        Exact::Suffix(s) => {
                            affixes.suffixes.insert(s.len());
                        }
                        Exact::TextFolded(_) => affixes.folded = true,
                        Exact::PrefixFolded(p) => {
                            affixes.folded = true;
                            affixes.folded_prefixes.insert(p.len());
                        }
                        Exact::SuffixFolded(s) => {
                            affixes.folded = true;
                            affixes.folded_suffixes.insert(s.len());
                        }
                        _ => {}
                    }
                    self.index
                        .entry(key_hash(&path, &value))
                        .or_default()
                        .push(pattern_index);
                }
            }
            Anchor::Spans(of_field) => {
                insert_spans(&mut self.ranges, &path, of_field, pattern_index)
            }
            Anchor::Networks(of_field) => {
                insert_spans(&mut self.networks, &path, of_field, pattern_index)
            }
        }
    }

    /// Puts the unanchored alternatives of pattern `pattern_index` in the automatons; one
    /// without a condition an automaton can check, or that no automaton takes, makes the
    /// pattern a candidate for every event.
    fn add_to_automatons(&mut self, pattern_index: usize, alternatives: Vec<Pattern>) {
        if alternatives.is_empty() {
            return;
        }
        if self.in_shard + alternatives.len() > SHARD_PATTERNS {
            self.new_shard();
        }
        let mut unconditional = false;
        let mut held_in = BTreeSet::new();
        for alternative in alternatives {
            let json = automaton_json(&alternative);
            if json.as_object().is_some_and(|o| o.is_empty()) {
                unconditional = true;
                continue;
            }
            let json = json.to_string();
            let mut added = self.last_shard().add_pattern(pattern_index, &json);
            // An automaton refuses a pattern that would take it past its size budget (many
            // `cidr`s do): a new one takes it, and one that refuses it alone leaves the
            // pattern to the recheck, for every event.
            if added.is_err() && self.in_shard > 0 {
                self.new_shard();
                added = self.last_shard().add_pattern(pattern_index, &json);
            }
            match added {
                Ok(()) => {
                    self.in_shard += 1;
                    held_in.insert(self.shards.len() - 1);
                }
                Err(e) => {
                    tracing::warn!(
                        pattern = pattern_index,
                        "the pattern automaton refused a pattern, which is checked on every event instead: {e}"
                    );
                    unconditional = true;
                }
            }
        }
        for shard in held_in {
            self.shards[shard].members.push(pattern_index);
        }
        if unconditional {
            self.always.push(pattern_index);
        }
    }

    fn new_shard(&mut self) {
        self.shards.push(Shard::new());
        self.in_shard = 0;
    }

    fn last_shard(&mut self) -> &mut Quamina<usize> {
        &mut self
            .shards
            .last_mut()
            .expect("at least one shard")
            .automaton
    }

    /// Builds each automaton now, on an empty event, rather than on the first real one; one
    /// that fails is marked and its patterns checked one by one from then on.
    fn finish(mut self, patterns: &[Pattern]) -> CompiledPatterns {
        for shard in &mut self.shards {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shard.automaton.matches_for_event(b"{}")
            }));
            if !matches!(built, Ok(Ok(_))) {
                tracing::warn!(
                    patterns = shard.members.len(),
                    "the pattern automaton failed to build; these rules are checked one by one"
                );
                shard.broken = true;
            }
        }
        for ranges in [&mut self.ranges, &mut self.networks] {
            for range in ranges.values_mut() {
                range.coverage = Vec::new();
            }
            ranges.retain(|_, range| range.units.iter().any(|unit| !unit.is_empty()));
        }
        CompiledPatterns {
            index: self.index,
            affixes: self.affixes,
            ranges: self.ranges,
            networks: self.networks,
            shards: self.shards,
            patterns: patterns.to_vec(),
            always: self.always,
            exclusions: self.exclusions.finish(),
        }
    }
}

/// Patterns compiled together; a match is the index of a pattern.
pub struct CompiledPatterns {
    /// Alternatives with a rare exact value (or prefix, or suffix), by its key: one lookup
    /// per event leaf (and per indexed prefix or suffix length of its field).
    index: HashMap<u64, Vec<usize>>,
    /// By field path: the lengths of the prefixes and of the suffixes indexed on it.
    affixes: HashMap<String, Affixes>,
    /// By field path: alternatives with rare numeric ranges on it.
    ranges: HashMap<String, RangeIndex>,
    /// By field path: alternatives with rare networks on it (a binary search per address).
    networks: HashMap<String, RangeIndex>,
    /// The other alternatives, in automatons.
    shards: Vec<Shard>,
    /// By index: the patterns, to confirm what the automatons propose.
    patterns: Vec<Pattern>,
    /// Patterns of which an alternative has nothing an automaton can check: candidates for
    /// every event, decided by the recheck alone.
    always: Vec<usize>,
    /// Alternatives of `exists` and `anything-but` alone, decided without the recheck.
    exclusions: Exclusions,
}

impl CompiledPatterns {
    /// Compiles `patterns`; a match reports a pattern's index in this slice.
    pub fn compile(patterns: &[Pattern]) -> Result<CompiledPatterns, PatternError> {
        CompiledPatterns::compile_with(patterns, INDEX_LIMIT)
    }

    /// [`compile`](Self::compile), indexing alternatives whose exact values are shared by at
    /// most `index_limit` of them (0: none, everything in automatons).
    pub(crate) fn compile_with(
        patterns: &[Pattern],
        index_limit: usize,
    ) -> Result<CompiledPatterns, PatternError> {
        let expanded = expand_all(patterns)?;
        let anchored = Rarity::of(&expanded).choose_anchors(expanded, index_limit);
        let mut built = Builder::new(anchored.ranges, anchored.networks);
        for (pattern_index, alternatives) in anchored.patterns.into_iter().enumerate() {
            let mut automaton_alternatives = Vec::new();
            for (alternative, anchor) in alternatives {
                match anchor {
                    Some(anchor) => built.index(pattern_index, anchor),
                    None if Exclusions::takes(&alternative) => {
                        built.exclusions.add(pattern_index, &alternative)
                    }
                    None => automaton_alternatives.push(alternative),
                }
            }
            built.add_to_automatons(pattern_index, automaton_alternatives);
        }
        Ok(built.finish(patterns))
    }

    /// How many patterns are in automatons (the rest are indexed, or checked on every event).
    #[cfg(test)]
    pub(crate) fn in_automatons(&self) -> usize {
        self.shards.iter().map(|shard| shard.members.len()).sum()
    }

    /// The indices of the patterns `event` (a JSON object) matches, ascending.
    pub fn matches(&self, event: &Value) -> Vec<usize> {
        let mut found = self.always.clone();
        if !self.index.is_empty() || !self.ranges.is_empty() || !self.networks.is_empty() {
            let index = &self.index;
            let mut look_up = |path: &str, leaf: LeafRef<'_>| {
                if let LeafRef::Number(bits) = leaf {
                    if let Some(range) = self.ranges.get(path) {
                        found.extend_from_slice(range.candidates(f64::from_bits(bits)));
                    }
                }
                if let (LeafRef::Text(text), Some(networks)) = (&leaf, self.networks.get(path)) {
                    if let Some(address) = address_key(text) {
                        found.extend_from_slice(networks.candidates(address as f64));
                    }
                }
                if let Some(indexed) = index.get(&leaf_hash(path, leaf)) {
                    found.extend_from_slice(indexed);
                }
            };
            visit_leaves(event, &mut String::new(), &mut |path, leaf| {
                if let (LeafRef::Text(text), Some(affixes)) = (&leaf, self.affixes.get(path)) {
                    let lengths = (&affixes.prefixes, &affixes.suffixes);
                    for affix in affixes_of(text, lengths, (LeafRef::Prefix, LeafRef::Suffix)) {
                        look_up(path, affix);
                    }
                    if affixes.folded {
                        let folded = text.to_lowercase();
                        look_up(path, LeafRef::TextFolded(&folded));
                        let lengths = (&affixes.folded_prefixes, &affixes.folded_suffixes);

                        for affix in affixes_of(
                            &folded,
                            lengths,
                            (LeafRef::PrefixFolded, LeafRef::SuffixFolded),
                        ) {
                            look_up(path, affix);
                        }
                    }
                }
                look_up(path, leaf);
            });
        }
        if self.shards.iter().any(|shard| !shard.members.is_empty()) {
            let bytes = serde_json::to_vec(event).expect("a JSON value serializes");
            for shard in self.shards.iter().filter(|shard| !shard.members.is_empty()) {
                shard.propose(&bytes, &mut found);
            }
        }
        let mut decided = Vec::new();
        if !self.exclusions.is_empty() {
            self.exclusions.decide(event, &mut decided, &mut found);
        }
        found.sort_unstable();
        found.dedup();
        found.retain(|index| self.patterns[*index].matches(event));
        if found.is_empty() {
            return decided;
        }
        if !decided.is_empty() {
            found.extend(decided);
            found.sort_unstable();
            found.dedup();
        }
        found
    }
}

/// Makes a leaf of a piece of event text.
type LeafOf<'t> = fn(&'t str) -> LeafRef<'t>;

/// The prefixes and suffixes of `text` of the given byte lengths that fall on character
/// boundaries, as the leaves `prefix` and `suffix` make of them.
fn affixes_of<'t>(
    text: &'t str,
    (prefixes, suffixes): (&BTreeSet<usize>, &BTreeSet<usize>),
    (prefix, suffix): (LeafOf<'t>, LeafOf<'t>),
) -> Vec<LeafRef<'t>> {
    heads(text, prefixes)
        .map(prefix)
        .chain(tails(text, suffixes).map(suffix))
        .collect()
}

/// The prefixes of `text` of the given byte lengths that end on a character boundary.
pub(super) fn heads<'t, 'l>(
    text: &'t str,
    lengths: &'l BTreeSet<usize>,
) -> impl Iterator<Item = &'t str> + 'l
where
    't: 'l,
{
    lengths.iter().filter_map(move |length| text.get(..*length))
}

/// The suffixes of `text` of the given byte lengths that start on a character boundary.
pub(super) fn tails<'t, 'l>(
    text: &'t str,
    lengths: &'l BTreeSet<usize>,
) -> impl Iterator<Item = &'t str> + 'l
where
    't: 'l,
{
    lengths.iter().filter_map(move |length| {
        text.len()
            .checked_sub(*length)
            .and_then(|start| text.get(start..))
    })
}

/// The `$or`-free alternatives a pattern stands for (its disjunctive normal form).
fn expand(pattern: &Pattern) -> Vec<Pattern> {
    // Nested objects may hold $or too: expand each field's alternatives first.
    let mut partials = vec![Pattern::default()];
    for (name, field) in &pattern.fields {
        let options: Vec<Field> = match field {
            Field::Leaf(_) => vec![field.clone()],
            Field::Object(inner) => expand(inner).into_iter().map(Field::Object).collect(),
        };
        partials = product(partials, |partial| {
            options
                .iter()
                .map(|option| {
                    let mut next = partial.clone();
                    next.fields.push((name.clone(), option.clone()));
                    next
                })
                .collect()
        });
        if partials.len() > MAX_ALTERNATIVES {
            return partials;
        }
    }
    for alternatives in &pattern.any_of {
        let options: Vec<Pattern> = alternatives.iter().flat_map(expand).collect();
        partials = product(partials, |partial| {
            options
                .iter()
                .map(|option| merge(partial, option))
                .collect()
        });
        if partials.len() > MAX_ALTERNATIVES {
            return partials;
        }
    }
    partials
}

fn product(partials: Vec<Pattern>, extend: impl Fn(&Pattern) -> Vec<Pattern>) -> Vec<Pattern> {
    partials.iter().flat_map(extend).collect()
}

/// Both patterns' fields in one; a field named by both must satisfy both, which the
/// automaton cannot say in one field, so the first keeps it and the pattern is rechecked.
fn merge(a: &Pattern, b: &Pattern) -> Pattern {
    let mut merged = a.clone();
    for (name, field) in &b.fields {
        match merged.fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, Field::Object(existing))) => {
                if let Field::Object(inner) = field {
                    *existing = merge(existing, inner);
                } else {
                    merged.fields.push((name.clone(), field.clone()));
                }
            }
            _ => merged.fields.push((name.clone(), field.clone())),
        }
    }
    merged
}

/// The automaton's copy of an `$or`-free pattern: the pattern less what the automaton would
/// miss (so it proposes at least every event the pattern matches).
fn automaton_json(pattern: &Pattern) -> Value {
    let mut object = Map::new();
    for (name, field) in &pattern.fields {
        // A field named twice (from a merged $or) keeps its first condition here.
        if object.contains_key(name) {
            continue;
        }
        match field {
            Field::Object(inner) => {
                let json = automaton_json(inner);
                if json.as_object().is_some_and(|o| !o.is_empty()) {
                    object.insert(name.clone(), json);
                }
            }
            Field::Leaf(conditions)
                if conditions.contains(&Condition::Exists(false))
                    || (conditions.len() > 1
                        && conditions.iter().any(|c| matches!(c, Condition::Exists(_)))) => {}
            Field::Leaf(conditions) => {
                if let Some(items) = conditions.iter().map(condition_json).collect() {
                    object.insert(name.clone(), Value::Array(items));
                }
            }
        }
    }
    // Many `anything-but`s slow the automaton down as they add up: where the pattern has
    // other fields to narrow with, they are left to the recheck.
    let excluding = |value: &Value| {
        value
            .as_array()
            .is_some_and(|items| items.iter().all(|item| item.get("anything-but").is_some()))
    };
    if object.values().any(|v| !excluding(v)) {
        object.retain(|_, v| !excluding(v));
    }
    Value::Object(object)
}

/// A condition in quamina's syntax, when quamina has it.
fn condition_json(condition: &Condition) -> Option<Value> {
    let op =
        |name: &str, value: Value| Some(Value::Object(Map::from_iter([(name.to_owned(), value)])));
    match condition {
        Condition::Exact(scalar) => Some(scalar.to_json()),
        Condition::Prefix(p) => op("prefix", Value::String(p.clone())),
        Condition::Suffix(s) => op("suffix", Value::String(s.clone())),
        Condition::EqualsIgnoreCase(s) => op("equals-ignore-case", Value::String(s.clone())),
        // quamina's escapes are not promised to be EventBridge's: those are rechecked.
        Condition::Wildcard(w) if !w.has_escapes() => op("wildcard", Value::String(w.text.clone())),
        Condition::Wildcard(_)
        | Condition::PrefixIgnoreCase(_)
        | Condition::SuffixIgnoreCase(_) => None,
        Condition::Exists(b) => op("exists", Value::Bool(*b)),
        // The automaton misses IPv6 addresses in IPv6 networks: those are rechecked.
        Condition::Cidr(network) if network.is_v4() => {
            op("cidr", Value::String(network.text.clone()))
        }
        Condition::Cidr(_) => None,
        Condition::Numeric(comparisons) => op(
            "numeric",
            Value::Array(
                comparisons
                    .iter()
                    .flat_map(|(cmp, bound)| {
                        [
                            Value::String(cmp.as_str().to_owned()),
                            Scalar::Number(*bound).to_json(),
                        ]
                    })
                    .collect(),
            ),
        ),
        Condition::AnythingBut(Excluded::Values(values))
            if values.iter().all(|v| matches!(v, Scalar::Text(_))) =>
        {
            op(
                "anything-but",
                Value::Array(values.iter().map(Scalar::to_json).collect()),
            )
        }
        Condition::AnythingBut(_) => None,
    }
}
