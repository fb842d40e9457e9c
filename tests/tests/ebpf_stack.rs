//! Every program of the eBPF object fits the stack limit of the oldest kernel lb supports, as
//! Linux 6.1's verifier counts it (`check_max_stack_depth`): along each chain of BPF-to-BPF
//! calls, the frames' sizes, each rounded up to 32 bytes, add up to at most 512. Newer kernels
//! count frames more tightly, so a datapath change can pass every test on the host and still
//! be refused on 6.1, found only by the VM run; this check finds it on the host, from the built
//! object, in a second.
//!
//! A frame's size is the deepest stack slot its instructions touch: loads and stores through
//! `r10`, and pointers made from it (`rN = r10; rN += -off`, handed to helpers).
use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex, SymbolKind};

/// Linux's MAX_BPF_STACK.
const STACK_MAX: u64 = 512;
/// 6.1 rounds every frame up to this.
const FRAME_ROUND: u64 = 32;
const INSN: usize = 8;
const BPF_PSEUDO_CALL: u8 = 1;

/// A function: where it starts (section, byte offset) identifies it.
type FnAt = (SectionIndex, u64);

struct Function {
    name: String,
    /// In a program's own section (an entry point), not in `.text` (a subprogram).
    entry: bool,
    /// Deepest stack byte touched, before rounding.
    depth: u64,
    calls: Vec<FnAt>,
}

/// The functions of the object, with their frames and callees.
fn functions(obj: &object::File) -> HashMap<FnAt, Function> {
    let mut out = HashMap::new();
    for sym in obj.symbols() {
        let (SymbolKind::Text, Some(index)) = (sym.kind(), sym.section_index()) else {
            continue;
        };
        if sym.size() == 0 {
            continue;
        }
        let section = obj.section_by_index(index).expect("symbol's section");
        let data = section.data().expect("section data");
        let code = &data[sym.address() as usize..(sym.address() + sym.size()) as usize];
        let relocations: HashMap<u64, RelocationTarget> = section
            .relocations()
            .map(|(off, rel)| (off, rel.target()))
            .collect();
        let (depth, calls) = frame(obj, index, sym.address(), code, &relocations);
        let function = Function {
            name: sym.name().unwrap_or("?").to_string(),
            entry: section.name().is_ok_and(|n| n != ".text"),
            depth,
            calls,
        };
        out.insert((index, sym.address()), function);
    }
    out
}

/// The deepest stack byte `code` (at `start` in section `index`) touches, and what it calls.
fn frame(
    obj: &object::File,
    index: SectionIndex,
    start: u64,
    code: &[u8],
    relocations: &HashMap<u64, RelocationTarget>,
) -> (u64, Vec<FnAt>) {
    let mut depth = 0i64;
    let mut calls = Vec::new();
    // Registers holding r10 plus an offset.
    let mut fp: [Option<i64>; 11] = [None; 11];
    let mut pc = 0;
    while pc + INSN <= code.len() {
        let i = &code[pc..pc + INSN];
        let (op, dst, src) = (i[0], usize::from(i[1] & 0xf), i[1] >> 4);
        let off = i64::from(i16::from_le_bytes([i[2], i[3]]));
        let imm = i64::from(i32::from_le_bytes([i[4], i[5], i[6], i[7]]));
        let at = start + pc as u64;
        match op & 0x07 {
            // LDX: a load through r10 (or an alias), into dst.
            0x01 => {
                if let Some(base) = fp.get(usize::from(src)).copied().flatten() {
                    depth = depth.max(-(base + off));
                }
                fp[dst] = None;
            }
            // ST, STX: a store through r10 (or an alias).
            0x02 | 0x03 => {
                if let Some(base) = fp[dst] {
                    depth = depth.max(-(base + off));
                }
            }
            // ALU64: track `rN = r10` and `rN += imm`; any other write ends an alias.
            0x07 => {
                fp[dst] = match op {
                    0xbf if src == 10 => Some(0),
                    0x07 => fp[dst].map(|base| base + imm),
                    _ => None,
                };
                if let Some(base) = fp[dst] {
                    depth = depth.max(-base);
                }
            }
            0x05 if op == 0x85 => {
                if src == BPF_PSEUDO_CALL {
                    calls.push(callee(obj, index, at, imm, relocations));
                }
                // Calls clobber r0-r5.
                fp[..6].fill(None);
            }
            // ALU, LD (imm64 takes two slots).
            0x04 | 0x00 => fp[dst] = None,
            _ => {}
        }
        fp[10] = Some(0);
        pc += if op == 0x18 { 2 * INSN } else { INSN };
    }
    (depth.max(0) as u64, calls)
}

/// The function a BPF-to-BPF call at `at` goes to: through its relocation when it has one (a
/// call into `.text`, against the function's symbol or the section's), else pc-relative.
fn callee(
    obj: &object::File,
    index: SectionIndex,
    at: u64,
    imm: i64,
    relocations: &HashMap<u64, RelocationTarget>,
) -> FnAt {
    let relative = |base: u64| (base as i64 + (imm + 1) * INSN as i64) as u64;
    match relocations.get(&at) {
        Some(RelocationTarget::Symbol(s)) => {
            let sym = obj.symbol_by_index(*s).expect("relocation symbol");
            let section = sym.section_index().expect("callee section");
            match sym.kind() {
                SymbolKind::Section => (section, relative(sym.address())),
                _ => (section, sym.address()),
            }
        }
        _ => (index, relative(at)),
    }
}

/// The deepest chain from `f`, as 6.1 adds it up, and the path (function names).
fn chain(fns: &HashMap<FnAt, Function>, f: &FnAt) -> (u64, Vec<String>) {
    let function = &fns[f];
    let own = function.depth.max(1).div_ceil(FRAME_ROUND) * FRAME_ROUND;
    let deepest = function
        .calls
        .iter()
        .map(|c| {
            assert!(
                fns.contains_key(c),
                "{}: call to an unknown function {c:?}",
                function.name
            );
            chain(fns, c)
        })
        .max_by_key(|(bytes, _)| *bytes)
        .unwrap_or_default();
    let mut path = vec![format!("{} ({own})", function.name)];
    path.extend(deepest.1);
    (own + deepest.0, path)
}

#[test]
fn every_program_fits_the_stack_of_linux_6_1() {
    let obj = object::File::parse(lb::dataplane::OBJECT).expect("the eBPF object parses");
    let fns = functions(&obj);
    let mut entries: Vec<(&FnAt, &Function)> = fns.iter().filter(|(_, f)| f.entry).collect();
    entries.sort_by_key(|(_, f)| f.name.clone());
    assert!(entries.len() >= 10, "programs found: {}", entries.len());
    let mut too_deep = Vec::new();
    for (at, _) in entries {
        let (bytes, path) = chain(&fns, at);
        println!("{bytes:>4} {}", path.join(" -> "));
        if bytes > STACK_MAX {
            too_deep.push(format!("{bytes} bytes: {}", path.join(" -> ")));
        }
    }
    assert!(
        too_deep.is_empty(),
        "call chains over Linux 6.1's {STACK_MAX}-byte stack (frames rounded to {FRAME_ROUND}); \
         move a large local into a function of its own (#[inline(never)]) beside the deep \
         frame rather than under it:\n{}",
        too_deep.join("\n")
    );
}
