//! The matcher: a parsed template compiled into a small nondeterministic automaton, and the
//! breadth-first run over a topic's bytes that keeps matching linear (see the parent module's
//! "Cost" section).

use super::chars::{Class, value_char_ends};
use super::template::{Expression, Modifier, Operator, Part, VarSpec};

/// Bytes one step of the automaton can consume at most, plus one: the size of the ring of
/// offsets the matcher keeps.
const WINDOW: usize = 16;
// The longest step is a percent-encoded 4-byte UTF-8 sequence: 12 bytes.
const _: () = assert!(4 * 3 < WINDOW);

type StateId = u32;

#[derive(Debug, Clone, Copy)]
enum Step {
    /// One literal character.
    Char(char),
    /// One value character. With a limit, the step counts the characters of a prefix-limited
    /// value and is allowed only while fewer than `limit` were used; without, it resets the
    /// count.
    Value { class: Class, limit: Option<u16> },
}

#[derive(Debug, Clone, Copy)]
struct Move {
    step: Step,
    to: StateId,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// Empty moves; they reset the count of value characters.
    empty: Vec<StateId>,
    moves: Vec<Move>,
}

/// A compiled template: the literal text before its first expression and after its last one,
/// checked first, and an automaton for what lies between.
#[derive(Debug, Clone)]
pub(super) struct Template {
    head: String,
    tail: String,
    states: Vec<State>,
    start: StateId,
    accept: StateId,
    /// Variables in all its expressions: what the automaton's size grows with.
    pub(super) variables: usize,
}

/// How much work a match did: (state, offset) visits and moves tried.
#[derive(Debug, Default)]
pub(super) struct Work {
    pub(super) steps: u64,
}

/// No count at this (state, offset): the state is not live there.
const ABSENT: u16 = u16::MAX;

impl Template {
    pub(super) fn compile(parts: &[Part]) -> Template {
        let mut parts = parts;
        let mut head = String::new();
        let mut tail = String::new();
        if let [Part::Literal(text), rest @ ..] = parts {
            head.clone_from(text);
            parts = rest;
        }
        if let [rest @ .., Part::Literal(text)] = parts {
            tail.clone_from(text);
            parts = rest;
        }
        let mut builder = Builder { states: Vec::new() };
        let start = builder.state();
        let mut at = start;
        for part in parts {
            at = match part {
                Part::Literal(text) => builder.text(at, text),
                Part::Expression(expression) => builder.expression(at, expression),
            };
        }
        let variables = parts
            .iter()
            .map(|part| match part {
                Part::Expression(expression) => expression.variables.len(),
                Part::Literal(_) => 0,
            })
            .sum();
        Template { head, tail, states: builder.states, start, accept: at, variables }
    }

    pub(super) fn matches(&self, topic: &str, work: &mut Work) -> bool {
        if topic.len() < self.head.len() + self.tail.len()
            || !topic.starts_with(&self.head)
            || !topic.ends_with(&self.tail)
        {
            return false;
        }
        self.run(&topic[self.head.len()..topic.len() - self.tail.len()], work)
    }

    /// Runs the automaton over all of `text`: a breadth-first simulation over byte offsets.
    fn run(&self, text: &str, work: &mut Work) -> bool {
        let mut frontier = Frontier::new(self.states.len());
        frontier.add(0, self.start, 0);
        for offset in 0..=text.len() {
            if frontier.live[offset % WINDOW].is_empty() {
                if frontier.pending == 0 {
                    return false;
                }
                continue;
            }
            let mut states = frontier.close(offset, &self.states, work);
            if offset == text.len() {
                return frontier.count(offset, self.accept) != ABSENT;
            }
            for &state in &states {
                let count = frontier.take(offset, state);
                for step in &self.states[state as usize].moves {
                    work.steps += 1;
                    match step.step {
                        Step::Char(c) => {
                            let mut buffer = [0; 4];
                            let encoded = c.encode_utf8(&mut buffer).as_bytes();
                            if text.as_bytes()[offset..].starts_with(encoded) {
                                frontier.add(offset + encoded.len(), step.to, 0);
                            }
                        }
                        Step::Value { class, limit } => {
                            let count = match limit {
                                None => 0,
                                Some(limit) if count < limit => count + 1,
                                Some(_) => continue,
                            };
                            let ends = value_char_ends(text, offset, class, limit.is_some());
                            for end in ends.into_iter().flatten() {
                                frontier.add(end, step.to, count);
                            }
                        }
                    }
                }
            }
            states.clear();
            frontier.live[offset % WINDOW] = states;
        }
        false
    }

    #[cfg(any(test, feature = "testing"))]
    pub(super) fn edges(&self) -> usize {
        self.states.iter().map(|s| s.empty.len() + s.moves.len()).sum()
    }
}

/// The live states at the next `WINDOW` byte offsets, a ring indexed by offset % `WINDOW`.
///
/// `counts[slot * states + state]` is, for a live state, the fewest value characters used so
/// far by the prefix-limited value it is in (0 outside one), else `ABSENT`. Fewer is never
/// worse, so keeping the least is exact.
#[derive(Debug)]
struct Frontier {
    states: usize,
    counts: Vec<u16>,
    live: [Vec<StateId>; WINDOW],
    /// Live (state, offset) pairs in the whole ring.
    pending: usize,
}

impl Frontier {
    fn new(states: usize) -> Frontier {
        Frontier {
            states,
            counts: vec![ABSENT; WINDOW * states],
            live: Default::default(),
            pending: 0,
        }
    }

    fn cell(&self, offset: usize, state: StateId) -> usize {
        offset % WINDOW * self.states + state as usize
    }

    fn count(&self, offset: usize, state: StateId) -> u16 {
        self.counts[self.cell(offset, state)]
    }

    /// Makes `state` live at `offset` with `count`, or lowers its count.
    fn add(&mut self, offset: usize, state: StateId, count: u16) {
        let cell = self.cell(offset, state);
        if self.counts[cell] == ABSENT {
            self.live[offset % WINDOW].push(state);
            self.pending += 1;
        }
        self.counts[cell] = self.counts[cell].min(count);
    }

    /// Removes `state` from `offset`, returning its count.
    fn take(&mut self, offset: usize, state: StateId) -> u16 {
        let cell = self.cell(offset, state);
        self.pending -= 1;
        std::mem::replace(&mut self.counts[cell], ABSENT)
    }

    /// Closes the states live at `offset` over empty moves (which reset the count) and takes
    /// their list out of the ring.
    fn close(&mut self, offset: usize, graph: &[State], work: &mut Work) -> Vec<StateId> {
        let mut states = std::mem::take(&mut self.live[offset % WINDOW]);
        let mut next = 0;
        while next < states.len() {
            let state = states[next];
            next += 1;
            for &to in &graph[state as usize].empty {
                work.steps += 1;
                let cell = self.cell(offset, to);
                if self.counts[cell] == ABSENT {
                    states.push(to);
                    self.pending += 1;
                }
                self.counts[cell] = 0;
            }
        }
        states
    }
}

struct Builder {
    states: Vec<State>,
}

impl Builder {
    fn state(&mut self) -> StateId {
        self.states.push(State::default());
        StateId::try_from(self.states.len() - 1).expect("a template has fewer than 2^32 states")
    }

    fn empty(&mut self, from: StateId, to: StateId) {
        self.states[from as usize].empty.push(to);
    }

    fn step(&mut self, from: StateId, step: Step, to: StateId) {
        self.states[from as usize].moves.push(Move { step, to });
    }

    /// A chain matching `text` from `from`; returns its end.
    fn text(&mut self, from: StateId, text: &str) -> StateId {
        let mut at = from;
        for c in text.chars() {
            let next = self.state();
            self.step(at, Step::Char(c), next);
            at = next;
        }
        at
    }

    /// A chain matching `text` from `from` to `to`.
    fn text_to(&mut self, from: StateId, text: &str, to: StateId) {
        let end = self.text(from, text);
        self.empty(end, to);
    }

    /// A state looping on value characters: reached from `from` by an empty move, or (when
    /// `non_empty`) by one value character.
    fn run(&mut self, from: StateId, class: Class, limit: Option<u16>, non_empty: bool) -> StateId {
        let run = self.state();
        let step = Step::Value { class, limit };
        if non_empty {
            self.step(from, step, run);
        } else {
            self.empty(from, run);
        }
        self.step(run, step, run);
        run
    }

    /// The whole expression from `from`; returns its end.
    ///
    /// States `none` (no item yet) and `some` (at least one item) before each variable; the
    /// variable is either skipped or its item is entered after `first` (from `none`) or
    /// `separator` (from `some`). Linear in the number of variables.
    fn expression(&mut self, from: StateId, expression: &Expression) -> StateId {
        let operator = expression.operator;
        let mut none = from;
        let mut some: Option<StateId> = None;
        for variable in &expression.variables {
            let entry = self.state();
            self.text_to(none, operator.first(), entry);
            if let Some(some) = some {
                let mut buffer = [0; 4];
                self.text_to(some, operator.separator().encode_utf8(&mut buffer), entry);
            }
            let item_end = self.item(entry, operator, variable);
            let next_none = self.state();
            self.empty(none, next_none);
            let next_some = self.state();
            self.empty(item_end, next_some);
            if let Some(some) = some {
                self.empty(some, next_some);
            }
            none = next_none;
            some = Some(next_some);
        }
        let end = self.state();
        self.empty(none, end);
        if let Some(some) = some {
            self.empty(some, end);
        }
        end
    }

    /// One defined variable's item from `entry` (after `first` or the separator); returns its
    /// end.
    fn item(&mut self, entry: StateId, operator: Operator, variable: &VarSpec) -> StateId {
        let class = operator.class();
        let separator = Step::Char(operator.separator());
        let limit = match variable.modifier {
            Modifier::Prefix(n) => Some(n),
            Modifier::None | Modifier::Explode => None,
        };
        match (operator.named(), variable.modifier) {
            (false, Modifier::None | Modifier::Prefix(_)) => self.run(entry, class, limit, false),
            (false, Modifier::Explode) => {
                let end = self.state();
                // A list: members (possibly empty) joined by the separator.
                let list = self.run(entry, class, None, false);
                self.step(list, separator, list);
                self.empty(list, end);
                // A map: `key=value` pairs with non-empty keys.
                let pair = self.state();
                self.empty(entry, pair);
                let key = self.run(pair, class, None, true);
                let value = self.state();
                self.step(key, Step::Char('='), value);
                self.step(value, Step::Value { class, limit: None }, value);
                self.step(value, separator, pair);
                self.empty(value, end);
                end
            }
            (true, Modifier::None | Modifier::Prefix(_)) => {
                let name = self.text(entry, &variable.name);
                self.named_value(name, operator, limit)
            }
            (true, Modifier::Explode) => {
                let key = self.run(entry, class, None, true);
                let end = self.named_value(key, operator, None);
                self.step(end, separator, entry);
                end
            }
        }
    }

    /// After a name or key at `name`: `=value`, or for an empty value `name=` (`?`, `&`) or
    /// `name` alone (`;`). Returns the end.
    fn named_value(&mut self, name: StateId, operator: Operator, limit: Option<u16>) -> StateId {
        let class = operator.class();
        let equals = self.state();
        self.step(name, Step::Char('='), equals);
        if operator.empty_keeps_equals() {
            self.step(equals, Step::Value { class, limit }, equals);
            equals
        } else {
            let end = self.state();
            self.empty(name, end);
            let value = self.run(equals, class, limit, true);
            self.empty(value, end);
            end
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::selector::template::parse_template;

    fn compile(template: &str) -> Template {
        let parts =
            parse_template(template).unwrap_or_else(|e| panic!("{template:?} should parse: {e}"));
        Template::compile(&parts)
    }

    // -----------------------------------------------------------------------------------------
    // No exponential blow-up: work is bounded by (topic length + 1) × automaton edges.

    fn work(template: &str, topic: &str) -> (bool, u64, u64) {
        let t = compile(template);
        let mut work = Work::default();
        let matched = t.matches(topic, &mut work);
        let bound = (topic.len() as u64 + 1) * t.edges() as u64;
        assert!(work.steps <= bound, "{template:?}: {} steps > {bound}", work.steps);
        (matched, work.steps, bound)
    }

    #[test]
    fn pathological_templates_cost_linear_work() {
        let many_simple: String = (0..40).map(|i| format!("{{v{i}}}")).collect();
        let many_in_one =
            format!("{{{}}}", (0..40).map(|i| format!("v{i}")).collect::<Vec<_>>().join(","));
        let many_explode =
            format!("{{/{}}}", (0..20).map(|i| format!("v{i}*")).collect::<Vec<_>>().join(","));
        let many_prefix: String = (0..20).map(|i| format!("{{v{i}:9999}}")).collect();
        let cases = [
            (many_simple.clone(), format!("{}!", "a".repeat(5_000))),
            (many_in_one, format!("{}!", "a,".repeat(2_500))),
            (many_explode, format!("{}!", "/a".repeat(2_500))),
            (many_prefix, format!("{}!", "%C3%A9".repeat(1_000))),
            ("{+a}{+b}{+c}{#d}{+e}{+f}".to_owned(), format!("{} ", "a/".repeat(2_500))),
            ("{;a*}{;b*}{;c*}{?d*}{&e*}".to_owned(), format!("{}!", ";a=b".repeat(1_250))),
            (format!("{many_simple}x"), "a".repeat(5_000)),
        ];
        for (template, topic) in cases {
            let (matched, steps, _) = work(&template, &topic);
            assert!(!matched, "{template:?}");
            // At most a few million steps, where a backtracking matcher could try 40^5000 splits.
            assert!(steps < 5_000_000, "{template:?}: {steps} steps");
        }
        // And the matching counterparts.
        let (matched, steps, _) = work(&many_simple, &"a".repeat(5_000));
        assert!(matched);
        assert!(steps < 5_000_000);
    }

    #[test]
    fn typical_selectors_cost_little() {
        // The literal head and tail are compared before the automaton runs.
        let (matched, steps, _) =
            work("https://example.com/books/{id}", "https://example.org/books/1");
        assert!(!matched);
        assert_eq!(steps, 0);
        let (matched, steps, _) =
            work("https://example.com/books/{id}", "https://example.com/books/12345");
        assert!(matched);
        assert!(steps < 40, "{steps}");
    }

    // -----------------------------------------------------------------------------------------
    // A second, independent and deliberately naive matcher (exponential, sets of end offsets,
    // written straight from the rules in the module docs), compared with the automaton on
    // random small templates and topics.

    fn naive(parts: &[Part], topic: &str) -> bool {
        let mut ends = BTreeSet::from([0]);
        for part in parts {
            ends = ends.into_iter().flat_map(|at| naive_part(part, topic, at)).collect();
        }
        ends.contains(&topic.len())
    }

    fn after(topic: &str, at: usize, text: &str) -> Option<usize> {
        topic[at..].starts_with(text).then_some(at + text.len())
    }

    fn naive_part(part: &Part, topic: &str, at: usize) -> BTreeSet<usize> {
        let expression = match part {
            Part::Literal(text) => return after(topic, at, text).into_iter().collect(),
            Part::Expression(expression) => expression,
        };
        let op = expression.operator;
        let vars = &expression.variables;
        let mut out = BTreeSet::from([at]);
        for mask in 1..(1_u32 << vars.len()) {
            let mut ends = BTreeSet::from([at]);
            let defined = vars.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1);
            for (n, (_, var)) in defined.enumerate() {
                let lead = if n == 0 { op.first().to_owned() } else { op.separator().to_string() };
                ends = ends
                    .into_iter()
                    .filter_map(|e| after(topic, e, &lead))
                    .flat_map(|e| naive_item(op, var, topic, e))
                    .collect();
            }
            out.extend(ends);
        }
        out
    }

    /// Ends of runs of value characters from `at`, of at most `limit` characters.
    fn runs(topic: &str, at: usize, class: Class, limit: Option<u16>) -> BTreeSet<usize> {
        let mut out = BTreeSet::from([at]);
        let mut frontier = BTreeSet::from([at]);
        let mut used = 0;
        while !frontier.is_empty() && limit.is_none_or(|l| used < l) {
            used += 1;
            frontier = frontier
                .into_iter()
                .flat_map(|e| value_char_ends(topic, e, class, limit.is_some()))
                .flatten()
                .collect();
            out.extend(frontier.iter().copied());
        }
        out
    }

    fn non_empty_runs(topic: &str, at: usize, class: Class) -> BTreeSet<usize> {
        let mut out = runs(topic, at, class, None);
        out.remove(&at);
        out
    }

    /// `one` from `at`, then any number of (separator, `one`).
    fn repeated(
        topic: &str,
        at: usize,
        separator: char,
        one: &dyn Fn(usize) -> BTreeSet<usize>,
    ) -> BTreeSet<usize> {
        let mut out = one(at);
        let mut frontier: Vec<usize> = out.iter().copied().collect();
        while let Some(e) = frontier.pop() {
            if let Some(e) = after(topic, e, &separator.to_string()) {
                for end in one(e) {
                    if out.insert(end) {
                        frontier.push(end);
                    }
                }
            }
        }
        out
    }

    fn naive_named_value(
        op: Operator,
        topic: &str,
        at: usize,
        limit: Option<u16>,
    ) -> BTreeSet<usize> {
        let class = op.class();
        let values = after(topic, at, "=").map(|e| runs(topic, e, class, limit));
        if op.empty_keeps_equals() {
            values.unwrap_or_default()
        } else {
            let mut out = BTreeSet::from([at]);
            out.extend(values.unwrap_or_default().into_iter().filter(|&e| e > at + 1));
            out
        }
    }

    fn naive_item(op: Operator, var: &VarSpec, topic: &str, at: usize) -> BTreeSet<usize> {
        let class = op.class();
        let separator = op.separator();
        let limit = match var.modifier {
            Modifier::Prefix(n) => Some(n),
            _ => None,
        };
        match (op.named(), var.modifier) {
            (false, Modifier::Explode) => {
                let list = repeated(topic, at, separator, &|e| runs(topic, e, class, None));
                let pair = |e| -> BTreeSet<usize> {
                    non_empty_runs(topic, e, class)
                        .into_iter()
                        .filter_map(|k| after(topic, k, "="))
                        .flat_map(|v| runs(topic, v, class, None))
                        .collect()
                };
                let map = repeated(topic, at, separator, &pair);
                list.union(&map).copied().collect()
            }
            (false, _) => runs(topic, at, class, limit),
            (true, Modifier::Explode) => {
                let pair = |e| -> BTreeSet<usize> {
                    non_empty_runs(topic, e, class)
                        .into_iter()
                        .flat_map(|k| naive_named_value(op, topic, k, None))
                        .collect()
                };
                repeated(topic, at, separator, &pair)
            }
            (true, _) => match after(topic, at, &var.name) {
                Some(e) => naive_named_value(op, topic, e, limit),
                None => BTreeSet::new(),
            },
        }
    }

    /// xorshift64*: a tiny deterministic generator, so the comparison needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn random_template(rng: &mut Rng) -> String {
        let mut text = String::new();
        for _ in 0..1 + rng.below(3) {
            if rng.below(3) == 0 {
                text.push_str(rng.pick(&["a", "/", "x.", "é", "b/", "=", ","]));
                continue;
            }
            text.push('{');
            text.push_str(rng.pick(&["", "+", "#", ".", "/", ";", "?", "&"]));
            for i in 0..1 + rng.below(3) {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(rng.pick(&["x", "y", "ab", "x.y"]));
                text.push_str(rng.pick(&["", "", "*", "*", ":1", ":2", ":3"]));
            }
            text.push('}');
        }
        text
    }

    fn random_topic(rng: &mut Rng) -> String {
        const TOKENS: &[&str] = &[
            "a",
            "b",
            "x",
            "y",
            "ab",
            "x.y",
            "é",
            "%41",
            "%C3%A9",
            "%c3",
            "%E2%82%AC",
            "%",
            "/",
            ".",
            ",",
            ";",
            "=",
            "?",
            "&",
            "#",
            "-",
            "x=",
            "y=",
            "ab=",
            " ",
            "{x}",
        ];
        (0..rng.below(9)).map(|_| rng.pick(TOKENS)).collect()
    }

    #[test]
    fn automaton_agrees_with_naive_matcher() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut total, mut positive) = (0, 0);
        for _ in 0..1_500 {
            let template = random_template(&mut rng);
            let parts = parse_template(&template).unwrap();
            let t = compile(&template);
            for _ in 0..50 {
                let topic = random_topic(&mut rng);
                let expected = topic == template || naive(&parts, &topic);
                // As `Selector::matches` does for a template: its own text, else the automaton.
                let matched = topic == template || t.matches(&topic, &mut Work::default());
                assert_eq!(matched, expected, "{template:?} against {topic:?}");
                total += 1;
                positive += usize::from(expected);
            }
        }
        // Enough of both outcomes for the comparison to mean something.
        assert!(positive * 20 > total && positive * 2 < total, "{positive} of {total}");
    }
}
