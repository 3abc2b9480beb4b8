; Ferry test guest: a 512-byte boot sector that needs no OS.
;
; It reads its configuration from LBA 1, enters 32-bit protected mode and
; loops forever: one pass writes one byte to every 4 KiB page of a memory
; range (so live migration has pages to re-send), then increments a pass
; counter.  Every `hb_every` passes it prints "FERRY-HB <passes>\r\n" to COM1.
; "FERRY-BOOT\r\n" is printed once, before the loop: a migrated guest keeps
; counting without a second FERRY-BOOT, a rebooted one starts over.
;
; Config sector (LBA 1, little endian), written by build.py:
;   0  "FRYCFG"     magic; without it the defaults below apply
;   6  u16          layout version (1)
;   8  u32          dirty range start, MiB (default 16, must be >= 1)
;  12  u32          dirty range length, MiB (default 16; 0 = no dirtying)
;  16  u32          heartbeat every N passes (default 25)
;  20  u16          PIT reload: a pass starts at most once per PIT period
;                   (11932 = 10 ms); 0 = run passes flat out
;
; Pacing passes with PIT interrupts + HLT makes the heartbeat rate the same
; under TCG and KVM, and leaves the host CPU idle between passes.
;
; Mailbox at physical 0x500 (free BIOS scratch area): "FERRYCNT", then the
; u32 pass counter, readable from outside e.g. with HMP `xp /1wu 0x508`.

BITS 16
ORG 0x7C00

CFG     equ 0x7E00              ; config sector is loaded right after us
MAILBOX equ 0x0500
COM1    equ 0x3F8

start:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    jmp 0:load_cfg              ; normalise CS:IP (some BIOSes use 07C0:0000)

load_cfg:
    ; INT 13h AH=02: read 1 sector at C/H/S 0/0/2 (= LBA 1) from the boot
    ; drive (DL, as the BIOS handed it over) to ES:BX.
    mov ax, 0x0201
    mov cx, 0x0002
    xor dh, dh
    mov bx, CFG
    int 0x13
    jc .defaults
    cmp dword [CFG], 'FRYC'
    jne .defaults
    cmp word [CFG+4], 'FG'
    je .cfg_ok
.defaults:
    mov dword [CFG+8], 16
    mov dword [CFG+12], 16
    mov dword [CFG+16], 25
    mov word [CFG+20], 11932
.cfg_ok:
    cli
    in al, 0x92                 ; fast A20 gate: reach memory above 1 MiB
    or al, 2
    and al, 0xFE                ; bit 0 would reset the machine
    out 0x92, al
    lgdt [gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp 0x08:pm32

BITS 32
pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7C00
    mov dword [MAILBOX], 'FERR'
    mov dword [MAILBOX+4], 'YCNT'
    mov dword [MAILBOX+8], 0

    mov esi, boot_msg
    call puts

    mov bx, [CFG+20]
    test bx, bx
    jz .no_pacing
    ; PIT channel 0, lo/hi byte, mode 2 (rate generator): IRQ0 every period.
    mov al, 0x34
    out 0x43, al
    mov al, bl
    out 0x40, al
    mov al, bh
    out 0x40, al
    ; Unmask only IRQ0 on the PICs.  SeaBIOS leaves the master PIC at vector
    ; 8, so the IDT needs entries 0..8 only (see idtr).
    mov al, 0xFE
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
    lidt [idtr]
.no_pacing:
    mov edi, [CFG+16]           ; passes until the next heartbeat

main_loop:
    ; One pass: one byte per page, never zero so no page looks blank.
    mov edx, [CFG+8]
    shl edx, 20
    mov ecx, [CFG+12]
    shl ecx, 8                  ; MiB -> 4 KiB pages
    mov al, [MAILBOX+8]
    or al, 0x80
    jecxz .pass_done
.page:
    mov [edx], al
    add edx, 4096
    dec ecx
    jnz .page
.pass_done:
    inc dword [MAILBOX+8]
    dec edi
    jnz .pace
    mov edi, [CFG+16]
    mov esi, hb_msg
    call puts
    mov eax, [MAILBOX+8]
    call put_dec
    mov esi, crlf
    call puts
.pace:
    cmp word [CFG+20], 0
    je main_loop
    sti                         ; interrupts are on only while halted:
    hlt                         ; IRQ0 lands in irq0, which resumes the loop
    jmp main_loop

; IRQ0 (vector 8): acknowledge at the master PIC and start the next pass.
; No IRET on purpose: kvm-pvm (nested KVM here) fails to emulate IRET in
; 32-bit protected mode ("KVM internal error"), so the handler drops its
; frame and jumps back with interrupts still off (interrupt gate).
irq0:
    mov al, 0x20
    out 0x20, al
    mov esp, 0x7C00
    jmp main_loop

; put_dec: print EAX as unsigned decimal.
put_dec:
    push 0                      ; sentinel: digits are pushed as '0'..'9'
    mov ecx, 10
.div:
    xor edx, edx
    div ecx
    add dl, '0'
    push edx
    test eax, eax
    jnz .div
.out:
    pop eax
    test eax, eax
    jz .done
    call putc
    jmp .out
.done:
    ret

; puts: print the NUL-terminated string at ESI.
puts:
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret

; putc: write AL to COM1 once the transmit holding register is empty.
putc:
    push edx
    push eax
    mov dx, COM1+5
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop eax
    mov dx, COM1
    out dx, al
    pop edx
    ret

boot_msg db "FERRY-BOOT", 13, 10, 0
hb_msg   db "FERRY-HB ", 0
crlf     db 13, 10, 0

align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF       ; 0x08: flat 4 GiB code, 32-bit
    dq 0x00CF92000000FFFF       ; 0x10: flat 4 GiB data
gdtr:
    dw gdtr - gdt - 1
    dd gdt

; The IDT base is set 64 bytes before our single gate so that vector 8
; lands on it; vectors 0..7 are CPU exceptions we never expect (one would
; triple-fault and reset the guest, which shows as a new FERRY-BOOT).
idt_irq0:
    dw irq0                     ; offset 15..0 (we live below 64 KiB)
    dw 0x08                     ; code selector
    db 0
    db 0x8E                     ; present, ring 0, 32-bit interrupt gate
    dw 0                        ; offset 31..16
idtr:
    dw 9 * 8 - 1
    dd idt_irq0 - 8 * 8

    times 510 - ($ - $$) db 0
    dw 0xAA55
