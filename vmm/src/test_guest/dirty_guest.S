/* lull-vmm dirtying test guest: a PVH kernel that keeps writing every page of 32 MiB, so a
 * pre-copy migration never converges, and checks that its memory holds what it wrote.
 * Entered in 32-bit protected mode, paging off, interrupts off.
 * 1. prints "dirty-guest: ready\n";
 * 2. forever, pass n = 0, 1, 2, ...: for every page of 0x400000..0x2400000 checks that its
 *    first dword is n (every page was written n times) and adds 1; a page that does not hold
 *    n makes it print "dirty-guest: MISMATCH\n" and halt. After every 16th pass it prints
 *    '.'; a 'q' on COM1 (looked at after each pass) writes 0x31 to the isa-debug-exit port
 *    (lull-vmm exits with status 0x31 << 1 | 1 = 99).
 * Assembled once with `as --32` and `ld -m elf_i386 -Ttext=0x100000`, `objcopy -O binary`;
 * the bytes live in mod.rs. */
    .code32
    .globl _start
_start:
    mov $0x9f000, %esp          /* a stack in low RAM: PVH provides none */
    mov $ready, %esi
    call puts
    xor %ebx, %ebx              /* the pass number */
pass:
    mov $0x400000, %edi
page:
    cmp %ebx, (%edi)
    jne mismatch
    incl (%edi)
    add $0x1000, %edi
    cmp $0x2400000, %edi
    jb page
    inc %ebx
    test $15, %ebx
    jnz poll
    mov $'.', %al
    call putc
poll:
    mov $0x3fd, %dx             /* LSR: a byte waiting? */
    in %dx, %al
    test $1, %al
    jz pass
    mov $0x3f8, %dx
    in %dx, %al
    cmp $'q', %al
    jne pass
    mov $0x31, %al
    mov $0xf4, %dx
    out %al, %dx
    jmp stop
mismatch:
    mov $bad, %esi
    call puts
stop:
    cli
    hlt
    jmp stop
putc:
    push %edx
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
puts:
    lodsb
    test %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret
ready:
    .asciz "dirty-guest: ready\n"
bad:
    .asciz "dirty-guest: MISMATCH\n"
