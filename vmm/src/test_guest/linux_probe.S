/* lull-vmm Linux boot protocol probe: the protected-mode part of a minimal bzImage.
 * Entered at code32_start with %esi = boot_params (the zero page). Prints to COM1
 * "<header magic> <E820 entry count as a letter: 'A' + n> <command line>\n", then powers off (S5).
 * Assembled with `as --64` (.code32) and `ld -Ttext=0x100000`; the bytes live in mod.rs. */
    .code32
    .globl _start
_start:
    mov $0x3f8, %dx
    lea 0x202(%esi), %ebx       /* setup_header.header: "HdrS" */
    mov $4, %ecx
1:  movb (%ebx), %al
    out %al, %dx
    inc %ebx
    dec %ecx
    jnz 1b
    mov $' ', %al
    out %al, %dx
    movzbl 0x1e8(%esi), %eax    /* e820_entries */
    add $'A', %al
    out %al, %dx
    mov $' ', %al
    out %al, %dx
    mov 0x228(%esi), %ebx       /* setup_header.cmd_line_ptr */
2:  movb (%ebx), %al
    test %al, %al
    jz 3f
    out %al, %dx
    inc %ebx
    jmp 2b
3:  mov $'\n', %al
    out %al, %dx
    mov $0x604, %dx             /* PM1a_CNT: SLP_EN | SLP_TYP=5 */
    mov $0x3400, %ax
    out %ax, %dx
4:  cli
    hlt
    jmp 4b
