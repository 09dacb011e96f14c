//! Alternatives made only of `exists` and `anything-but` conditions, decided exactly, one bit
//! an alternative. Nothing can index them (they name no value an event must carry) and an
//! automaton would propose them for almost every event, each then rechecked: 1,000 of them
//! cost a thousand rechecks an event. Here each field the alternatives name is looked up once
//! an event: a field without a value clears the bits of the alternatives that need one, a
//! value clears those of `exists: false`, and the value's own entry in a hash of the
//! excluded texts, numbers, prefixes and suffixes clears those that exclude it. The cost
//! grows with the fields named and the prefix and suffix lengths, not with the rules.
//!
//! What a bit cannot say goes to the recheck as a candidate: a field under an array of
//! objects (a pattern's fields must then hold in one element) and an `anything-but` field
//! holding several values.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::matcher::{heads, tails};
use super::pattern::{Condition, Excluded, Field, Pattern, Scalar};

/// A set of alternatives, one bit each.
#[derive(Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn full(count: usize) -> Bits {
        let mut words = vec![u64::MAX; count.div_ceil(64)];
        if !count.is_multiple_of(64) {
            words[count / 64] = (1 << (count % 64)) - 1;
        }
        Bits(words)
    }

    fn set(&mut self, bit: usize) {
        let word = bit / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (bit % 64);
    }

    /// Removes the members of `other`.
    fn remove(&mut self, other: &Bits) {
        for (word, removed) in self.0.iter_mut().zip(&other.0) {
            *word &= !removed;
        }
    }

    fn remove_excluders(&mut self, excluders: &Excluders) {
        match excluders {
            Excluders::Few(bits) => {
                for bit in bits {
                    self.0[*bit as usize / 64] &= !(1 << (bit % 64));
                }
            }
            Excluders::Many(bits) => self.remove(bits),
        }
    }

    fn add(&mut self, other: &Bits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (word, added) in self.0.iter_mut().zip(&other.0) {
            *word |= added;
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }

    fn count(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// The members in word `index` (0 past the end).
    fn word(&self, index: usize) -> u64 {
        self.0.get(index).copied().unwrap_or(0)
    }
}

/// The bits set in `word`, ascending.
fn ones(mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (word != 0).then(|| {
            let bit = word.trailing_zeros() as usize;
            word &= word - 1;
            bit
        })
    })
}

/// The alternatives that exclude one value: listed while few, a set once more share it than
/// clearing them one by one would cost against clearing a set's words.
enum Excluders {
    Few(Vec<u32>),
    Many(Bits),
}

impl Default for Excluders {
    fn default() -> Excluders {
        Excluders::Few(Vec::new())
    }
}

impl Excluders {
    const FEW: usize = 64;

    fn insert(&mut self, bit: u32) {
        match self {
            Excluders::Few(bits) if bits.len() < Excluders::FEW => bits.push(bit),
            Excluders::Few(bits) => {
                let mut set = Bits::default();
                for listed in bits.iter().chain([&bit]) {
                    set.set(*listed as usize);
                }
                *self = Excluders::Many(set);
            }
            Excluders::Many(set) => set.set(bit as usize),
        }
    }
}

/// Excluded prefixes or suffixes of one field: the alternatives excluding each, and their
/// byte lengths (the event's value is looked up once per length).
#[derive(Default)]
struct Affixes {
    excluding: HashMap<String, Excluders>,
    lengths: BTreeSet<usize>,
}

impl Affixes {
    fn insert(&mut self, affix: &str, bit: u32) {
        self.lengths.insert(affix.len());
        self.excluding
            .entry(affix.to_owned())
            .or_default()
            .insert(bit);
    }
}

/// What the alternatives say of one event field.
#[derive(Default)]
struct FieldTests {
    /// The field's path, outermost name first.
    path: Vec<String>,
    /// Fail when the field has no value: `exists: true` and `anything-but`.
    need_value: Bits,
    /// Whether every alternative needs a value here: an event without one matches none.
    needed_by_all: bool,
    /// Fail when it has one: `exists: false`.
    need_none: Bits,
    /// `anything-but`: not decided here when the field holds several values.
    excluding: Bits,
    /// Fail on a value that is not text: `anything-but` a prefix, a suffix, or texts
    /// ignoring case.
    text_only: Bits,
    texts: HashMap<String, Excluders>,
    /// By the number's bits, -0 as 0.
    numbers: HashMap<u64, Excluders>,
    prefixes: Affixes,
    suffixes: Affixes,
    /// Lower-cased.
    folded: HashMap<String, Excluders>,
}

impl FieldTests {
    fn insert(&mut self, condition: &Condition, bit: usize) {
        let id = u32::try_from(bit).expect("fewer than 2^32 alternatives");
        let Condition::AnythingBut(excluded) = condition else {
            match condition {
                Condition::Exists(true) => self.need_value.set(bit),
                Condition::Exists(false) => self.need_none.set(bit),
                _ => unreachable!("only exists and anything-but are taken"),
            }
            return;
        };
        self.need_value.set(bit);
        self.excluding.set(bit);
        match excluded {
            Excluded::Values(values) => {
                for value in values {
                    match value {
                        Scalar::Text(text) => {
                            self.texts.entry(text.clone()).or_default().insert(id)
                        }
                        Scalar::Number(n) => {
                            self.numbers.entry(number_key(*n)).or_default().insert(id)
                        }
                        Scalar::Bool(_) | Scalar::Null => {
                            unreachable!("anything-but excludes texts or numbers")
                        }
                    }
                }
            }
            Excluded::Prefix(prefix) => {
                self.text_only.set(bit);
                self.prefixes.insert(prefix, id);
            }
            Excluded::Suffix(suffix) => {
                self.text_only.set(bit);
                self.suffixes.insert(suffix, id);
            }
            Excluded::EqualsIgnoreCase(texts) => {
                self.text_only.set(bit);
                for text in texts {
                    self.folded
                        .entry(text.to_lowercase())
                        .or_default()
                        .insert(id);
                }
            }
            Excluded::Wildcard(_) => unreachable!("wildcards are not taken"),
        }
    }

    /// Hash lookups a value of the field costs: fields that cost none (`exists` alone) are
    /// tested first, and often leave no alternative to look up values for.
    fn lookups(&self) -> usize {
        usize::from(!self.texts.is_empty() || !self.numbers.is_empty())
            + self.prefixes.lengths.len()
            + self.suffixes.lengths.len()
            + usize::from(!self.folded.is_empty())
    }

    /// Removes from `alive` the alternatives that exclude `leaf`, the field's one value.
    fn remove_excluding(&self, leaf: &Value, alive: &mut Bits) {
        let text = match leaf {
            Value::String(text) => text,
            Value::Number(n) => {
                let n = n.as_f64().expect("a leaf number is a float");
                if let Some(bits) = self.numbers.get(&number_key(n)) {
                    alive.remove_excluders(bits);
                }
                alive.remove(&self.text_only);
                return;
            }
            _ => {
                alive.remove(&self.text_only);
                return;
            }
        };
        if let Some(bits) = self.texts.get(text.as_str()) {
            alive.remove_excluders(bits);
        }
        let heads = heads(text, &self.prefixes.lengths).map(|head| (head, &self.prefixes));
        let tails = tails(text, &self.suffixes.lengths).map(|tail| (tail, &self.suffixes));
        for (affix, affixes) in heads.chain(tails) {
            if let Some(bits) = affixes.excluding.get(affix) {
                alive.remove_excluders(bits);
            }
        }
        if !self.folded.is_empty() {
            if let Some(bits) = self.folded.get(&text.to_lowercase()) {
                alive.remove_excluders(bits);
            }
        }
    }
}

/// A number as a key: its bits, -0 as 0 (patterns compare numbers as floats).
fn number_key(n: f64) -> u64 {
    if n == 0.0 {
        0
    } else {
        n.to_bits()
    }
}

/// What an event holds at a path.
enum Found<'e> {
    /// No value: the path is missing, or holds an object or an empty array.
    Nothing,
    One(&'e Value),
    Several,
    /// The path goes through an array of objects.
    Undecided,
}

fn find<'e>(event: &'e Value, path: &[String]) -> Found<'e> {
    let (last, parents) = path.split_last().expect("a path names a field");
    let mut object = event;
    for name in parents {
        match object.get(name) {
            Some(inner @ Value::Object(_)) => object = inner,
            Some(Value::Array(items)) if items.iter().any(Value::is_object) => {
                return Found::Undecided
            }
            // A scalar, or an array without objects, is read as an empty object.
            _ => return Found::Nothing,
        }
    }
    let Some(value) = object.get(last) else {
        return Found::Nothing;
    };
    let mut first = None;
    match count_leaves(value, &mut first) {
        0 => Found::Nothing,
        1 => Found::One(first.expect("one leaf")),
        _ => Found::Several,
    }
}

/// The scalars of `value` (itself, or an array's, nested arrays flattened), counted up to
/// two; the first kept.
fn count_leaves<'e>(value: &'e Value, first: &mut Option<&'e Value>) -> usize {
    match value {
        Value::Object(_) => 0,
        // As a pattern reads an event: a number no float holds is not a value.
        Value::Number(n) if n.as_f64().is_none() => 0,
        Value::Array(items) => {
            let mut count = 0;
            for item in items {
                count += count_leaves(item, first);
                if count > 1 {
                    break;
                }
            }
            count
        }
        scalar => {
            first.get_or_insert(scalar);
            1
        }
    }
}

/// The alternatives taken, and what they say of each field.
#[derive(Default)]
pub(super) struct Exclusions {
    /// The pattern of each alternative, by its bit: ascending, as patterns are added in order.
    owners: Vec<usize>,
    /// Whether a pattern has several alternatives here.
    owners_repeat: bool,
    /// Those every alternative needs first, then the cheapest to test.
    fields: Vec<FieldTests>,
}

impl Exclusions {
    /// Whether every condition of `alternative` (an `$or`-free pattern) is a field's only
    /// one and `exists` or `anything-but` a value, prefix, suffix or ignore-case text.
    pub(super) fn takes(alternative: &Pattern) -> bool {
        alternative.any_of.is_empty()
            && alternative.fields.iter().all(|(_, field)| match field {
                Field::Object(inner) => Exclusions::takes(inner),
                Field::Leaf(conditions) => matches!(
                    conditions.as_slice(),
                    [Condition::Exists(_)
                        | Condition::AnythingBut(
                            Excluded::Values(_)
                                | Excluded::Prefix(_)
                                | Excluded::Suffix(_)
                                | Excluded::EqualsIgnoreCase(_)
                        )]
                ),
            })
    }

    /// Adds an alternative of pattern `pattern`, which [`takes`](Self::takes) holds for.
    pub(super) fn add(&mut self, pattern: usize, alternative: &Pattern) {
        let bit = self.owners.len();
        self.owners_repeat |= self.owners.last() == Some(&pattern);
        self.owners.push(pattern);
        self.add_fields(alternative, &mut Vec::new(), bit);
    }

    /// Orders the fields for [`decide`](Self::decide), once every alternative is added.
    pub(super) fn finish(mut self) -> Exclusions {
        for field in &mut self.fields {
            field.needed_by_all = field.need_value.count() == self.owners.len();
        }
        self.fields
            .sort_by_key(|field| (!field.needed_by_all, field.lookups()));
        self
    }

    fn add_fields(&mut self, pattern: &Pattern, path: &mut Vec<String>, bit: usize) {
        for (name, field) in &pattern.fields {
            path.push(name.clone());
            match field {
                Field::Object(inner) => self.add_fields(inner, path, bit),
                Field::Leaf(conditions) => {
                    let tests = match self.fields.iter().position(|f| f.path == *path) {
                        Some(at) => &mut self.fields[at],
                        None => {
                            self.fields.push(FieldTests {
                                path: path.clone(),
                                ..FieldTests::default()
                            });
                            self.fields.last_mut().expect("just pushed")
                        }
                    };
                    for condition in conditions {
                        tests.insert(condition, bit);
                    }
                }
            }
            path.pop();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Fills `matched` (empty) with the patterns `event` matches by an alternative here,
    /// ascending, each once; pushes those it may match to `undecided`, for the recheck.
    pub(super) fn decide(
        &self,
        event: &Value,
        matched: &mut Vec<usize>,
        undecided: &mut Vec<usize>,
    ) {
        let mut alive = None;
        let mut doubtful = Bits::default();
        for field in &self.fields {
            let found = find(event, &field.path);
            if field.needed_by_all && matches!(found, Found::Nothing) {
                return;
            }
            let alive = alive.get_or_insert_with(|| Bits::full(self.owners.len()));
            match found {
                Found::Nothing => alive.remove(&field.need_value),
                Found::One(leaf) => {
                    alive.remove(&field.need_none);
                    field.remove_excluding(leaf, alive);
                }
                Found::Several => {
                    alive.remove(&field.need_none);
                    doubtful.add(&field.excluding);
                }
                Found::Undecided => {
                    doubtful.add(&field.need_value);
                    doubtful.add(&field.need_none);
                }
            }
            if alive.is_empty() {
                return;
            }
        }
        // No field tested: the alternatives name none (`{"attributes": {}}`) and all hold.
        let alive = alive.unwrap_or_else(|| Bits::full(self.owners.len()));
        // A rule matching most events fills `matched` with many patterns: 64 at a time where
        // a word is whole.
        matched.reserve(alive.count());
        for (index, word) in alive.0.iter().enumerate() {
            let owners = &self.owners[index * 64..];
            let doubted = word & doubtful.word(index);
            match word & !doubted {
                u64::MAX => matched.extend_from_slice(&owners[..64]),
                sure => matched.extend(ones(sure).map(|bit| owners[bit])),
            }
            undecided.extend(ones(doubted).map(|bit| owners[bit]));
        }
        if self.owners_repeat {
            matched.dedup();
        }
    }
}
