//! PVH entry: the 32-bit stub that the loader jumps to, up to the first Rust code in long mode.
//!
//! The PVH boot protocol (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`, used by QEMU `-kernel`, Firecracker,
//! Cloud Hypervisor and our own VMM) enters in 32-bit protected mode with paging off, flat
//! segments and `%ebx` holding the physical address of `hvm_start_info`. The stub zeroes .bss,
//! identity-maps the first 4 GiB with 2 MiB pages, enables long mode and calls
//! `arch::x86_64::kernel_entry(start_info_paddr)`. Rust code later replaces these page tables.

use core::arch::global_asm;

/// ELF note type for the 32-bit physical entry point (Xen public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

// The PVH note: name "Xen", type PHYS32_ENTRY, descriptor = 32-bit entry address.
global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 4
    .long {note_type}
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4
    "#,
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
);

global_asm!(
    r#"
    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi

    /* Zero .bss (it holds the boot stack and page tables). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories of 512 x 2 MiB pages. */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4

    movl $boot_pd, %edi
    movl $0x83, %eax
    movl $2048, %ecx
1:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 1b

    movl $boot_pd, %eax
    orl $0x3, %eax
    movl $boot_pdpt, %edi
    movl $4, %ecx
2:
    movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    loop 2b

    /* CR4.PAE, CR3, EFER.LME, CR0.PG|WP|PE */
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %esi, %edi
    call kernel_entry
3:
    cli
    hlt
    jmp 3b

    .section .rodata
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
    .balign 4
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .balign 16
boot_stack:
    .skip 65536
    .global boot_stack_top
boot_stack_top:
    "#,
    options(att_syntax)
);
