/* RTC guest: prints the CMOS clock's hour and minute (registers 4 and 2, BCD as the
 * firmware leaves them) as "rtc HH:MM", then powers off. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $s_rtc, %esi
	call puts
	mov $4, %al
	call print_bcd_reg
	mov $':', %al
	call putc
	mov $2, %al
	call print_bcd_reg
	mov $'\n', %al
	call putc
	jmp acpi_poweroff

/* print_bcd_reg: print CMOS register %al, a BCD byte, as two digits. */
print_bcd_reg:
	out %al, $0x70
	in $0x71, %al
	push %eax
	shr $4, %al
	add $'0', %al
	call putc
	pop %eax
	and $0xf, %al
	add $'0', %al
	call putc
	ret

#include "lib.S"

	.section .rodata
s_rtc:	.asciz "rtc "

	.bss
	.align 16
stack:	.space 4096
stack_top:
