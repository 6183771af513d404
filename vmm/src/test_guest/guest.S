/* lull-vmm test guest: a PVH kernel small enough to read in one sitting.
 * Entered in 32-bit protected mode, paging off, %ebx = hvm_start_info.
 * 1. prints "lull-test-guest: ready len=XXXXXXXX hash=XXXXXXXX\n" where len is the command
 *    line's length and hash its FNV-1a-32 hash (lets tests check a 1 MiB command line arrived intact);
 * 2. if the command line starts with 'h': cli; hlt forever (an idle guest that costs nothing);
 * 3. otherwise polls: a byte on COM1 is echoed back ('q' powers off) and appended to a log in
 *    guest RAM at 2 MiB (a page nothing else touches; its first word counts the bytes); '?'
 *    prints the log as "log=<bytes>\n", so tests can check that guest memory written after a
 *    restore survives a further snapshot. PWRBTN_STS in PM1a_STS powers off (S5 via PM1a_CNT
 *    with SLP_TYP=5 | SLP_EN).
 * Assembled once with `as --64` (.code32) and `ld -Ttext=0x100000`; the bytes live in mod.rs. */
    .code32
    .equ LOG, 0x200000          /* byte count (u32), then the bytes */
    .globl _start
_start:
    mov $0x9f000, %esp          /* a stack in low RAM: PVH provides none */
    mov %ebx, %edi              /* edi = hvm_start_info */
    mov $banner, %esi
    call puts
    mov 24(%edi), %esi          /* cmdline_paddr (low 32 bits) */
    xor %ecx, %ecx              /* length */
    mov $0x811c9dc5, %ebp       /* FNV-1a offset basis */
scan:
    movzbl (%esi,%ecx,1), %eax
    test %eax, %eax
    jz scanned
    xor %eax, %ebp
    imul $0x01000193, %ebp, %ebp
    inc %ecx
    jmp scan
scanned:
    mov $len_label, %esi
    call puts
    mov %ecx, %eax
    call puthex
    mov $hash_label, %esi
    call puts
    mov %ebp, %eax
    call puthex
    mov $'\n', %al
    call putc
    mov 24(%edi), %esi
    cmpb $'h', (%esi)
    je idle
poll:
    mov $0x3fd, %dx             /* LSR */
    in %dx, %al
    test $1, %al                /* data ready */
    jnz received
    mov $0x600, %dx             /* PM1a_STS */
    in %dx, %ax
    test $0x100, %ax            /* PWRBTN_STS */
    jnz poweroff
    jmp poll
received:
    mov $0x3f8, %dx
    in %dx, %al
    cmp $'q', %al
    je poweroff
    cmp $'?', %al
    je replay
    mov LOG, %ecx               /* append to the log in guest RAM */
    movb %al, LOG+4(%ecx)
    incl LOG
    out %al, %dx
    jmp poll
replay:
    mov $log_label, %esi
    call puts
    mov LOG, %ecx
    mov $LOG+4, %esi
3:  test %ecx, %ecx
    jz 4f
    lodsb
    call putc
    dec %ecx
    jmp 3b
4:  mov $'\n', %al
    call putc
    jmp poll
poweroff:
    mov $0x604, %dx             /* PM1a_CNT */
    mov $0x3400, %ax            /* SLP_EN | SLP_TYP=5 */
    out %ax, %dx
idle:
    cli
    hlt
    jmp idle

/* putc: %al to COM1 (the VMM's UART transmits at once, so no THRE wait). Keeps all registers. */
putc:
    push %edx
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
/* puts: NUL-terminated string at %esi. Clobbers eax, esi. */
puts:
    lodsb
    test %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret
/* puthex: %eax as 8 hex digits. Clobbers eax, edx, esi (keeps ecx). */
puthex:
    push %ecx
    mov %eax, %edx
    mov $8, %ecx
2:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    mov $digits, %esi
    movb (%esi,%eax,1), %al
    call putc
    dec %ecx
    jnz 2b
    pop %ecx
    ret
banner:     .asciz "lull-test-guest: ready"
len_label:  .asciz " len="
hash_label: .asciz " hash="
log_label:  .asciz "log="
digits:     .ascii "0123456789abcdef"
