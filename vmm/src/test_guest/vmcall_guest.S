/* lull-vmm VMCALL test guest: a PVH kernel that makes one hypercall on purpose.
 * Entered in 32-bit protected mode, paging off, interrupts off.
 * 1. installs an IDT whose #UD (vector 6) gate points at `ud`;
 * 2. prints "vmcall-guest: calling\n" and executes VMCALL with an unknown hypercall number;
 * 3. if the hypercall comes back: prints "vmcall-guest: returned\n" and writes 0x21 to the
 *    isa-debug-exit port 0xf4 (lull-vmm exits with status 0x21 << 1 | 1 = 67);
 *    if it raises #UD: prints "vmcall-guest: #UD\n", then waits for a 'q' on COM1 (so tests
 *    can talk to the VMM meanwhile) and writes 0x55 to port 0xf4 (exit status 171).
 *    If it never comes back, nothing more is printed (the test's watchdog ends it).
 * Assembled once with `as --32` and `ld -m elf_i386 -Ttext=0x100000`, `objcopy -O binary`;
 * the bytes live in mod.rs. */
    .code32
    .globl _start
_start:
    mov $0x9f000, %esp          /* a stack in low RAM: PVH provides none */
    mov $ud, %eax               /* gate 6: offset, selector 0x08, present 32-bit interrupt gate */
    mov %ax, idt+6*8
    movw $0x08, idt+6*8+2
    movw $0x8e00, idt+6*8+4
    shr $16, %eax
    mov %ax, idt+6*8+6
    lidt idt_descriptor
    mov $calling, %esi
    call puts
    mov $0x4c756c6c, %eax       /* no hypercall KVM knows (they are 1-12) */
    xor %ebx, %ebx
    xor %ecx, %ecx
    xor %edx, %edx
    xor %esi, %esi
    vmcall
    mov $returned, %esi
    call puts
    mov $0x21, %al
    jmp exit
ud:
    mov $ud_message, %esi
    call puts
wait_q:
    mov $0x3fd, %dx             /* LSR */
    in %dx, %al
    test $1, %al
    jz wait_q
    mov $0x3f8, %dx
    in %dx, %al
    cmp $'q', %al
    jne wait_q
    mov $0x55, %al
exit:
    mov $0xf4, %dx
    out %al, %dx
    cli
1:  hlt
    jmp 1b
putc:
    push %edx
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
puts:
    lodsb
    test %al, %al
    jz 2f
    call putc
    jmp puts
2:  ret
calling:    .asciz "vmcall-guest: calling\n"
returned:   .asciz "vmcall-guest: returned\n"
ud_message: .asciz "vmcall-guest: #UD\n"
    .align 8
idt_descriptor:
    .word 7*8-1
    .long idt
    .align 8
idt:
    .fill 7*8, 1, 0
