/* lull-vmm virtio-blk test guest: a driver for the first virtio-mmio device in ~60 instructions.
 * Entered in 32-bit protected mode, paging off (PVH). Polls; takes no interrupts.
 * 1. checks the window at 0xd0000000: magic "virt", version 2, device ID 2 (block);
 * 2. resets, ACKNOWLEDGE, DRIVER, accepts only VIRTIO_F_VERSION_1, FEATURES_OK (checked),
 *    sets queue 0 up with 8 descriptors at 3 MiB, QueueReady, DRIVER_OK;
 * 3. request 1: IN of sector 0 into a buffer; request 2: OUT of that buffer to sector 1;
 *    each is notified with a QueueNotify write and waited for on the used index;
 * 4. prints "virtio-blk-guest: in=SS data=DDDDDDDD out=SS isr=II" (status bytes, the first
 *    word of sector 0, InterruptStatus), acknowledges the interrupt and powers off (S5).
 * Anything unexpected prints "virtio-blk-guest: FAIL" and writes 1 to the isa-debug-exit port.
 * Assembled once with `as --64` (.code32) and `ld -Ttext=0x100000`; the bytes live in mod.rs. */
    .code32
    .equ MMIO, 0xd0000000
    .equ DESC, 0x300000
    .equ AVAIL, 0x301000
    .equ USED, 0x302000
    .equ HDR, 0x303000
    .equ DATA, 0x304000
    .equ STAT, 0x305000
    .globl _start
_start:
    mov $0x9f000, %esp
    mov $MMIO, %ebx
    cmpl $0x74726976, 0x00(%ebx)    /* MagicValue */
    jne fail
    cmpl $2, 0x04(%ebx)             /* Version */
    jne fail
    cmpl $2, 0x08(%ebx)             /* DeviceID: block */
    jne fail
    movl $0, 0x70(%ebx)             /* Status: reset */
    movl $1, 0x70(%ebx)             /* ACKNOWLEDGE */
    movl $3, 0x70(%ebx)             /* DRIVER */
    movl $1, 0x24(%ebx)             /* DriverFeaturesSel = 1 */
    movl $1, 0x20(%ebx)             /* bit 32: VERSION_1 */
    movl $0, 0x24(%ebx)
    movl $0, 0x20(%ebx)
    movl $0xb, 0x70(%ebx)           /* FEATURES_OK */
    testl $8, 0x70(%ebx)
    jz fail
    movl $0, 0x30(%ebx)             /* QueueSel = 0 */
    cmpl $8, 0x34(%ebx)             /* QueueNumMax >= 8 */
    jb fail
    movl $8, 0x38(%ebx)             /* QueueNum */
    movl $DESC, 0x80(%ebx)
    movl $0, 0x84(%ebx)
    movl $AVAIL, 0x90(%ebx)
    movl $0, 0x94(%ebx)
    movl $USED, 0xa0(%ebx)
    movl $0, 0xa4(%ebx)
    movl $1, 0x44(%ebx)             /* QueueReady */
    movl $0xf, 0x70(%ebx)           /* DRIVER_OK */
    testl $0x40, 0x70(%ebx)         /* DEVICE_NEEDS_RESET? */
    jnz fail

    movl $0, HDR                    /* VIRTIO_BLK_T_IN */
    movl $0, HDR+8                  /* sector 0 */
    mov $3, %ecx                    /* data descriptor: NEXT | WRITE */
    call submit
    mov $in_label, %esi
    call puts
    movzbl STAT, %eax
    call puthex2
    mov $data_label, %esi
    call puts
    mov DATA, %eax
    call puthex

    movl $1, HDR                    /* VIRTIO_BLK_T_OUT */
    movl $1, HDR+8                  /* sector 1 */
    mov $1, %ecx                    /* data descriptor: NEXT (device-readable) */
    call submit
    mov $out_label, %esi
    call puts
    movzbl STAT, %eax
    call puthex2
    mov $isr_label, %esi
    call puts
    mov 0x60(%ebx), %eax            /* InterruptStatus */
    push %eax
    call puthex2
    pop %eax
    mov %eax, 0x64(%ebx)            /* InterruptACK */
    mov $'\n', %al
    call putc
    mov $0x604, %dx                 /* PM1a_CNT: SLP_EN | SLP_TYP=5 */
    mov $0x3400, %ax
    out %ax, %dx
idle:
    cli
    hlt
    jmp idle

fail:
    mov $fail_label, %esi
    call puts
    mov $1, %al
    mov $0xf4, %dx
    out %al, %dx
    jmp idle

/* submit: one request (header HDR, 512 bytes at DATA with descriptor flags %ecx, status byte
 * STAT) on queue 0; returns once the device has used it. Clobbers eax, ecx, esi. */
submit:
    movb $0xff, STAT
    movl $HDR, DESC+0
    movl $0, DESC+4
    movl $16, DESC+8
    movw $1, DESC+12                /* NEXT */
    movw $1, DESC+14
    movl $DATA, DESC+16
    movl $0, DESC+20
    movl $512, DESC+24
    movw %cx, DESC+28
    movw $2, DESC+30
    movl $STAT, DESC+32
    movl $0, DESC+36
    movl $1, DESC+40
    movw $2, DESC+44                /* WRITE */
    movw $0, DESC+46
    movzwl AVAIL+2, %eax
    mov %eax, %esi
    and $7, %esi
    movw $0, AVAIL+4(,%esi,2)       /* ring[idx % 8] = head 0 */
    inc %eax
    movw %ax, AVAIL+2               /* publish (x86 stores are not reordered) */
    movl $0, 0x50(%ebx)             /* QueueNotify: queue 0 */
    mov $20000000, %ecx
1:  cmpw %ax, USED+2
    je 2f
    pause
    dec %ecx
    jnz 1b
    jmp fail
2:  ret

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
/* puthex: %eax as 8 hex digits; puthex2: %al as 2. Clobber eax, edx, esi. */
puthex:
    push %ecx
    mov $8, %ecx
    jmp 3f
puthex2:
    push %ecx
    shl $24, %eax
    mov $2, %ecx
3:  mov %eax, %edx
4:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    mov $digits, %esi
    movb (%esi,%eax,1), %al
    call putc
    dec %ecx
    jnz 4b
    pop %ecx
    ret
in_label:   .asciz "virtio-blk-guest: in="
data_label: .asciz " data="
out_label:  .asciz " out="
isr_label:  .asciz " isr="
fail_label: .asciz "virtio-blk-guest: FAIL\n"
digits:     .ascii "0123456789abcdef"
