//! Offsets of kernel struct members, read from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), for the few fields the eBPF programs read
//! with `bpf_probe_read_kernel` (see `proxy_common::QueueBound`).
//!
//! Only what that needs: the type section is walked record by record, and
//! a struct's members are searched by name, through anonymous structs and
//! unions. aya-obj parses BTF too but has no public member-offset API.

use std::path::Path;

/// The kernel's BTF, where the kernel publishes it.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// A parsed BTF blob: its types, by id (id 0 is `void`).
pub struct Btf {
    data: Vec<u8>,
    strings: usize,
    strings_end: usize,
    /// Where each type's record starts (index = type id - 1).
    types: Vec<usize>,
}

impl Btf {
    pub fn from_file(path: &Path) -> std::io::Result<Btf> {
        Btf::parse(std::fs::read(path)?).map_err(std::io::Error::other)
    }

    pub fn parse(data: Vec<u8>) -> Result<Btf, String> {
        let u32_at = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        let bad = || "not a little-endian BTF blob".to_string();
        if data.get(..2) != Some(&MAGIC.to_le_bytes()) {
            return Err(bad());
        }
        let field = |n: usize| u32_at(4 + 4 * n).map(|v| v as usize).ok_or_else(bad);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let (start, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        let strings = hdr_len + str_off;
        if end > data.len() || strings + str_len > data.len() {
            return Err("BTF sections run past the end of the blob".into());
        }
        let mut types = Vec::new();
        let mut at = start;
        while at < end {
            let info = u32_at(at + 4).ok_or_else(bad)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            if at + 12 + extra > end {
                return Err("a BTF type runs past its section".into());
            }
            types.push(at);
            at += 12 + extra;
        }
        Ok(Btf {
            data,
            strings,
            strings_end: strings + str_len,
            types,
        })
    }

    /// The byte offset of `member` in `struct name`, looking into anonymous
    /// structs and unions; `None` when either is unknown or the member is a
    /// bit field.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = (1..=self.types.len() as u32)
            .find(|&id| self.kind(id) == KIND_STRUCT && self.name(id) == Some(name))?;
        self.find_member(id, member, 0)
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let at = self.types[id as usize - 1];
        let info = self.u32(at + 4);
        let bitfields = info >> 31 == 1;
        for i in 0..(info & 0xffff) as usize {
            let m = at + 12 + 12 * i;
            let (name_off, ty, offset) = (self.u32(m), self.u32(m + 4), self.u32(m + 8));
            let bits = base_bits
                + if bitfields {
                    offset & 0xff_ffff
                } else {
                    offset
                };
            match self.string(name_off) {
                Some(n) if n == member => {
                    let is_bitfield = bitfields && offset >> 24 != 0;
                    return (!is_bitfield && bits.is_multiple_of(8)).then_some(bits / 8);
                }
                Some("") | None => {
                    let inner = self.resolve(ty);
                    if matches!(self.kind(inner), KIND_STRUCT | KIND_UNION)
                        && let Some(off) = self.find_member(inner, member, bits)
                    {
                        return Some(off);
                    }
                }
                Some(_) => {}
            }
        }
        None
    }

    /// `id` with typedefs and qualifiers looked through.
    fn resolve(&self, mut id: u32) -> u32 {
        // typedef, volatile, const, restrict, type tag
        while id != 0 && matches!(self.kind(id), 8..=11 | 18) {
            id = self.u32(self.types[id as usize - 1] + 8);
        }
        id
    }

    fn kind(&self, id: u32) -> u32 {
        match id {
            0 => 0,
            _ => (self.u32(self.types[id as usize - 1] + 4) >> 24) & 0x1f,
        }
    }

    fn name(&self, id: u32) -> Option<&str> {
        self.string(self.u32(self.types[id as usize - 1]))
    }

    fn string(&self, off: u32) -> Option<&str> {
        let start = self.strings + off as usize;
        let bytes = self.data.get(start..self.strings_end)?;
        let len = bytes.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&bytes[..len]).ok()
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.data[at..at + 4].try_into().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_members_the_queue_bound_reads_in_this_kernel() {
        // Every machine this runs on has BTF (a requirement of eBPF mode).
        let btf = Btf::from_file(Path::new(VMLINUX)).unwrap();
        let rcvbuf = btf.member_offset("sock", "sk_rcvbuf").unwrap();
        let user_data = btf.member_offset("sock", "sk_user_data").unwrap();
        let queued = btf.member_offset("sk_psock", "msg_tot_len").unwrap();
        let written = btf.member_offset("tcp_sock", "write_seq").unwrap();
        let read = btf.member_offset("tcp_sock", "copied_seq").unwrap();
        assert!(rcvbuf > 0 && user_data > 0 && queued > 0 && written > 0 && read > 0);
        assert_eq!(user_data % 8, 0, "a pointer is aligned");
        // struct sock begins with struct sock_common (`__sk_common`), whose
        // members are found through it.
        assert_eq!(btf.member_offset("sock", "__sk_common"), Some(0));
        assert_eq!(btf.member_offset("sock", "no_such_member"), None);
        assert_eq!(btf.member_offset("no_such_struct", "sk_rcvbuf"), None);
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"\x7fELF....".to_vec()).is_err());
        assert!(Btf::parse(Vec::new()).is_err());
        // A header whose sections run past the end.
        let mut blob = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 1000, 1000, 10] {
            blob.extend(v.to_le_bytes());
        }
        assert!(Btf::parse(blob).is_err());
    }
}
