/* Interrupt guest: routes IOAPIC pin 4 (COM1) to vector 0x24, enables the UART's
 * transmitter-empty interrupt and halts until the interrupt arrives through the irqfd;
 * then prints and powers off. PICs masked, LAPIC software-enabled, one IDT gate. The
 * handler does not return: `iret` is one of the instructions this project's nested KVM
 * cannot emulate, and the test only needs to see the interrupt arrive. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $irq_handler, %eax
	mov %ax, idt + 0x24 * 8
	movw $0x10, idt + 0x24 * 8 + 2	/* boot code selector */
	movw $0x8e00, idt + 0x24 * 8 + 4	/* present, 32-bit interrupt gate */
	shr $16, %eax
	mov %ax, idt + 0x24 * 8 + 6
	lidt idt_desc
	mov $0xff, %al
	out %al, $0x21			/* mask both PICs */
	out %al, $0xa1
	movl $0x1ff, 0xfee000f0		/* LAPIC software-enabled */
	movl $0x18, 0xfec00000		/* IOAPIC redirection entry 4, low */
	movl $0x24, 0xfec00010		/* vector 0x24, fixed, edge, active high */
	movl $0x19, 0xfec00000		/* high: destination APIC 0 */
	movl $0, 0xfec00010
	mov $s_wait, %esi
	call puts
	cli
	mov $0x3f9, %dx			/* IER: transmitter holding register empty */
	mov $0x02, %al
	out %al, %dx
1:	cli
	cmpl $0, got_irq
	jne 2f
	sti
	hlt				/* sti; hlt: no wake-up lost in between */
	jmp 1b
2:	mov $s_got, %esi
	call puts
	jmp acpi_poweroff

irq_handler:
	movl $1, got_irq
	mov $0x3f9, %dx			/* IER off: no more interrupts */
	xor %al, %al
	out %al, %dx
	mov $0x3fa, %dx			/* read IIR: acknowledge */
	in %dx, %al
	movl $0, 0xfee000b0		/* LAPIC EOI */
	mov $stack_top, %esp		/* drop the interrupt frame */
	jmp 2b

#include "lib.S"

	.section .rodata
	.align 8
idt_desc:	.word 256 * 8 - 1
		.long idt
s_wait:		.asciz "irq: waiting for COM1's interrupt\n"
s_got:		.asciz "irq: COM1 interrupt arrived on vector 0x24\n"

	.bss
	.align 16
idt:	.space 256 * 8
got_irq:	.long 0
	.space 4096
stack_top:
